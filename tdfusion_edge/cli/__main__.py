"""``python -m tdfusion_edge.cli`` runs the command line."""
import sys

from tdfusion_edge.cli import main

sys.exit(main())
