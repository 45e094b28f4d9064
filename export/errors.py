"""Errors of the export and inference-backend layer (one-line messages for the CLI)."""
from tdfusion_edge.errors import TDFusionError


class ExportError(TDFusionError):
    """An export that cannot be done as asked (bad option, unsupported combination, failed check)."""


class BackendUnavailable(TDFusionError):
    """A backend, provider or precision that is not usable on this machine."""


class TensorRTUnavailable(BackendUnavailable):
    """TensorRT (or a CUDA device / buffer library it needs) is missing here."""
