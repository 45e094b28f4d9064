"""tdfusion-edge: task-driven infrared–visible image fusion from training to the edge."""
__version__ = "0.1.0"
