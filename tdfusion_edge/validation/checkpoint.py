"""Checks on fusion / loss-generator checkpoints, run before any module is built from them.

A checkpoint is untrusted input. Reading: ``torch.load(weights_only=True)`` only, after sniffing
what the file is, so that random bytes, an ONNX model or a TorchScript archive are named as such.
Then, in this order, each a one-line ``CheckpointError`` naming the file and the first bad entry:

* every state-dict entry is a tensor of a floating dtype, every value finite (NaN / Inf refused by
  key name), every attention temperature of shape (heads, 1, 1);
* the format version is an integer (or a string of digits);
* the network config has the right types and sane sizes: ``dim`` 1..256, ``num_blocks`` 1..16,
  ``heads`` 1..64 dividing ``dim``, ``ffn_expansion`` in (0, 8] (the released net: 16, 2, 8, 2);
* the config agrees with the state dict's shapes (width, blocks, heads first, then every key and
  shape of the network built on the ``meta`` device, which allocates nothing).
Only then is the real network built and filled.
"""
from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from tdfusion_edge.errors import CheckpointError

log = logging.getLogger("tdfusion_edge.checkpoints")

# Size bounds (inclusive); generous next to the released network (dim 16, 2 blocks, 8 heads, FFN 2).
MAX_DIM = 256
MAX_BLOCKS = 16
MAX_HEADS = 64
MAX_FFN_EXPANSION = 8.0
TRAIN_STATE_FORMAT = "tdfusion-edge-train-state"  # train/state.py (not imported: it imports us)
EXPECTED = ("expected a fusion checkpoint written by torch.save (.pt/.pth): this project's format, "
            "a training state such as runs/<name>/last.pt, or the released ReFusion layout")
_TEMPERATURE = re.compile(r"(^|\.)temperature\d*$")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def describe_bytes(head: bytes, path: Path) -> str | None:
    """What a file that is not a torch checkpoint looks like ('an ONNX model', 'a PNG image', ...), or None."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head[:1] == b"\x08" and _is_onnx(path):
        return "an ONNX model"
    if head.startswith(b"PK\x03\x04"):
        return None  # a zip: torch's own format is checked by _zip_kind
    if head[:1] == b"\x80":
        return None  # a pickle (torch's legacy format): the weights-only unpickler decides
    if head.lstrip()[:1] in (b"{", b"%", b"#") or head.isascii():
        return "a text file"
    return "unrecognised bytes (not a PyTorch file)"


def _is_onnx(path: Path) -> bool:
    try:
        import onnx
    except ImportError:
        return path.suffix.lower() == ".onnx"
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # any parse failure means "not ONNX"
        return False
    return len(model.graph.node) > 0


def _zip_kind(path: Path) -> str | None:
    """None for a torch.save archive; else what the zip is."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "a damaged or truncated zip archive"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "a TorchScript archive"
    if not any(n.endswith("data.pkl") for n in names):
        return "a zip archive that torch.save did not write"
    return None


def read_checkpoint(path: str | Path, expected: str = EXPECTED) -> object:
    """``torch.load(weights_only=True)`` of ``path``; anything else is a one-line error saying what the file is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(64)
    kind = describe_bytes(head, path) or (_zip_kind(path) if head.startswith(b"PK") else None)
    if kind:
        hint = "; an ONNX model cannot be loaded as weights (the onnxruntime backend exports its own)" \
            if kind == "an ONNX model" else ""
        raise CheckpointError(f"{path} is {kind}, not a PyTorch checkpoint; {expected}{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(f"{path} needs the Python object {found.group(1)!r} to load, which a safe "
                                  f"(weights-only) load refuses: not a plain checkpoint; {expected}") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (damaged pickle); {expected}") from None
    except Exception as exc:  # torch raises many kinds for damaged files; never echo its hints
        raise CheckpointError(f"{path} is a damaged or truncated PyTorch file ({type(exc).__name__}); "
                              f"{expected}") from None


def parse_version(value: object, path: str | Path) -> int:
    """A format version (int, or a string of digits like '1' or '1.0') as its major number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,6}(\.\d{1,6})*", value.strip()):
        return int(value.strip().split(".")[0])
    raise CheckpointError(f"{path} has an unreadable format version {str(value)[:40]!r} (expected an integer)")


def check_state_entries(state: object, path: str | Path) -> Mapping[str, torch.Tensor]:
    """Every entry a finite floating-point tensor under a string key; temperatures of shape (heads, 1, 1)."""
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path} holds no state dict (found {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state-dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: entry {key!r} has dtype {value.dtype}, expected a floating-point tensor")
        if _TEMPERATURE.search(key) and (value.dim() != 3 or value.shape[0] < 1 or tuple(value.shape[1:]) != (1, 1)):
            raise CheckpointError(f"{path}: entry {key!r} has shape {tuple(value.shape)}, expected (heads, 1, 1)")
    for key, value in state.items():  # after the cheap checks: a full pass over the values
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: entry {key!r} holds non-finite values (NaN or Inf); "
                                  f"the weights are broken (diverged training or a damaged file)")
    return state


def check_net_config(values: object, path: str | Path, cfg_cls: type) -> Any:
    """A NetConfig from a checkpoint's config dict, after type and size checks."""
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{path} has no model config (found {type(values).__name__})")
    known = {"dim", "num_blocks", "heads", "ffn_expansion", "bias"}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise CheckpointError(f"{path}: unknown model config field(s) {', '.join(unknown)}")
    integers = {"dim": MAX_DIM, "num_blocks": MAX_BLOCKS, "heads": MAX_HEADS}
    for key, top in integers.items():
        if key in values:
            v = values[key]
            if not isinstance(v, int) or isinstance(v, bool):
                raise CheckpointError(f"{path}: config {key} is {str(v)[:40]!r}, expected an integer")
            if not 1 <= v <= top:
                raise CheckpointError(f"{path}: config {key} {v} is out of range (1..{top})")
    if "ffn_expansion" in values:
        v = values["ffn_expansion"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not 0 < v <= MAX_FFN_EXPANSION:
            raise CheckpointError(f"{path}: config ffn_expansion {str(v)[:40]!r} is out of range "
                                  f"(0..{MAX_FFN_EXPANSION:g})")
    if "bias" in values and not isinstance(values["bias"], bool):
        raise CheckpointError(f"{path}: config bias is {str(values['bias'])[:40]!r}, expected true or false")
    merged = {**cfg_cls().to_dict(), **dict(values)}
    if merged["dim"] % merged["heads"]:
        raise CheckpointError(f"{path}: config heads {merged['heads']} does not divide dim {merged['dim']}")
    try:
        return cfg_cls.from_dict(merged)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from None


def check_config_matches_state(config: Any, state: Mapping[str, torch.Tensor], path: str | Path,
                               model_cls: type) -> None:
    """The config's width, depth and heads against the tensors, then every key and shape (meta build)."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{path} is missing key {key!r}")
        return state[key]

    dim = need("project_in_1.weight").shape[0]
    if dim != config.dim:
        raise CheckpointError(f"{path}: config dim {config.dim} but the weights are {dim} wide")
    blocks = len({k.split(".")[1] for k in state if k.startswith("encoder1.")})
    if blocks != config.num_blocks:
        raise CheckpointError(f"{path}: config num_blocks {config.num_blocks} but the weights hold {blocks}")
    heads = need("encoder1.0.attn.temperature").shape[0]
    if heads != config.heads:
        raise CheckpointError(f"{path}: config heads {config.heads} but the temperatures hold {heads}")
    check_state_shapes(lambda: model_cls(config), state, path)


def check_state_shapes(build: Callable[[], torch.nn.Module], state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Every key of the network ``build()`` makes is in ``state`` with its shape, and nothing else; else one line."""
    with torch.device("meta"):  # shapes only: no memory, fast even for the largest allowed size
        expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{path} is missing key {key!r}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{path}: key {key!r} has shape {tuple(state[key].shape)}, "
                                  f"the config expects {shape}")
    extra = next((k for k in state if k not in expected), None)
    if extra is not None:
        raise CheckpointError(f"{path} has unexpected key {extra!r}")


def unpack_training_state(obj: Mapping, path: str | Path, kind: str) -> tuple[Mapping, object]:
    """(config dict, state dict) of F or G inside a training state (runs/<name>/last.pt)."""
    models, config = obj.get("models"), obj.get("config")
    model_key, config_key = {"FusionNet": ("fusion", "fusion_net"),
                             "LossGenerator": ("loss_gen", "loss_generator")}[kind]
    if not isinstance(models, Mapping) or not isinstance(config, Mapping):
        raise CheckpointError(f"{path} is a damaged training state (no models or config)")
    ablations = config.get("ablations") or []
    if kind == "FusionNet" and isinstance(ablations, (list, tuple)) and "weighted_average" in ablations:
        raise CheckpointError(f"{path} is a training state of the weighted_average ablation: it has no FusionNet")
    state = models.get(model_key)
    if state is None:
        raise CheckpointError(f"{path} is a training state without a {kind}")
    position = obj.get("position") if isinstance(obj.get("position"), Mapping) else {}
    log.info("%s is a training state: taking %s from it (epoch %s, step %s)", path,
             "F (the fusion network)" if kind == "FusionNet" else "G (the loss generator)",
             position.get("epoch", "?"), position.get("global_step", "?"))
    return config.get(config_key), state
