"""Errors a user can cause; the CLI prints them as one line instead of a traceback."""


class TDFusionError(Exception):
    """Base class of user-facing errors (bad file, bad argument, bad checkpoint)."""


class CheckpointError(TDFusionError):
    """A checkpoint that cannot be read or does not fit the model."""


class ImageReadError(TDFusionError):
    """An image file that is missing, unreadable or of an unsupported kind."""


class PairingError(TDFusionError):
    """An infrared/visible pair that does not match (size, missing partner)."""
