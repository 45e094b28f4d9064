"""Where exported ONNX files and TensorRT engines live, and the keys that name them.

A file is reused only when everything that shaped it matches: the weights (hashed by value, so the
released and our checkpoint format of the same network share a key), the deploy-graph version, the
graph options, the precision, and for engines the shape, the GPU and the TensorRT version (engines
are not portable across either).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

# Bump when DeployFusionNet or the exported graph changes, so stale cached files are not reused.
GRAPH_VERSION = "deploy-v1"
PRECISIONS = ("fp32", "fp16", "int8")
ENV_VAR = "TDFUSION_EDGE_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$TDFUSION_EDGE_CACHE``, else ``~/.cache/tdfusion-edge``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tdfusion-edge"


def model_hash(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a network's config and weights by value, with the deploy-graph version."""
    digest = hashlib.sha256(GRAPH_VERSION.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(repr(sorted(config.to_dict().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def slug(text: str) -> str:
    """Lower-case file-name-safe form of a device or version string."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines one exported artefact; ``filename`` is unique per key."""

    model_hash: str
    precision: str = "fp32"
    shape: tuple[int, int] | None = None      # H, W; None = dynamic
    batch: int | None = 1                      # None = dynamic
    options: str = "float"                     # graph options tag (pre/post-processing, detector)
    device: str | None = None                  # engines only: GPU name + compute capability
    runtime: str | None = None                 # engines only: TensorRT version

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.shape is not None and (len(self.shape) != 2 or min(self.shape) < 1):
            raise ValueError(f"shape must be (H, W) with positive sizes, got {self.shape!r}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be positive, got {self.batch}")

    def stem(self) -> str:
        """The file name without extension."""
        shape = "dynHW" if self.shape is None else f"{self.shape[0]}x{self.shape[1]}"
        batch = "bdyn" if self.batch is None else f"b{self.batch}"
        parts = ["fusion", self.model_hash[:16], slug(self.options), shape, batch, self.precision]
        if self.device:
            parts.append(slug(self.device))
        if self.runtime:
            parts.append("trt" + slug(self.runtime))
        return "-".join(parts)

    def onnx_path(self, root: Path) -> Path:
        """Where the ONNX file of this key lives under ``root``."""
        return root / "onnx" / f"{self.stem()}.onnx"

    def engine_path(self, root: Path) -> Path:
        """Where the TensorRT engine of this key lives under ``root``."""
        if not (self.device and self.runtime and self.shape):
            raise ValueError("an engine key needs a shape, a device and a TensorRT version")
        return root / "engines" / f"{self.stem()}.engine"


def produce_once(path: Path, produce: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``path`` if it exists, else call ``produce(tmp)`` and move ``tmp`` into place atomically.

    Returns (path, created). Concurrent producers are harmless: each writes its own temp file and the
    last rename wins with an identical file.
    """
    if path.is_file() and path.stat().st_size > 0:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        produce(Path(tmp))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)         # mkstemp makes 0600; cached files are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, True
