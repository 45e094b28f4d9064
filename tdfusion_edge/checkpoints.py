"""Checkpoints: the released ReFusion/TDFusion state-dict layout and this project's own format.

Every file is untrusted input: loaded with ``weights_only=True`` and checked by
``tdfusion_edge.validation.checkpoint`` (entries, sizes, config against shapes, finite values)
before any network is built; the first problem is reported in one line naming the key.
A training state (``runs/<name>/last.pt``) is accepted too: F (or G) is taken from it.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from .errors import CheckpointError
from .models import FusionNet, FusionNetConfig, LossGenerator, LossGeneratorConfig
from .validation.checkpoint import (TRAIN_STATE_FORMAT, check_config_matches_state, check_net_config,
                                    check_state_entries, parse_version, read_checkpoint, unpack_training_state)

FORMAT_NAME = "tdfusion-edge"
FORMAT_VERSION = 1
MODEL_CLASSES = {"FusionNet": (FusionNet, FusionNetConfig), "LossGenerator": (LossGenerator, LossGeneratorConfig)}

# Released module names → ours (FusionNet's cross-attention module and G's head were renamed).
_RENAMES = (
    (r"^FM\.", "fusion."),
    (r"\.body\.", "."),
    (r"^patch_embed1\.", "project_in_1."),
    (r"^patch_embed2\.", "project_in_2."),
    (r"^out1\.", "project_out_0."),
    (r"^out2\.", "act."),
    (r"^out3\.", "project_out_1."),
)


def read_torch_file(path: str | os.PathLike) -> object:
    """``torch.load`` with ``weights_only=True``; a file that is not a checkpoint is named for what it is."""
    return read_checkpoint(path)


def convert_released_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the released layout (every conv stored twice as ``x.weight`` and ``x.conv.weight``) to ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is not a tensor")
        if key.endswith(".conv.weight") or key.endswith(".conv.bias"):
            twin = key.replace(".conv.", ".")
            if twin in state and not torch.equal(state[twin], value):
                raise CheckpointError(f"checkpoint keys {key!r} and {twin!r} should hold the same tensor but differ")
            if twin in state:
                continue
            key = twin
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def infer_config(state: Mapping[str, torch.Tensor], kind: str = "FusionNet"):
    """Read width, depth, heads, FFN expansion and bias off a (converted) state dict."""
    cfg_cls = MODEL_CLASSES[kind][1]
    try:
        dim = state["project_in_1.weight"].shape[0]
        blocks = len({k.split(".")[1] for k in state if k.startswith("encoder1.")})
        heads = state["encoder1.0.attn.temperature"].shape[0]
        expansion = state["encoder1.0.ffn.project_in.weight"].shape[0] / (2 * dim)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint lacks {exc.args[0]!r}: not a {kind} state dict") from None
    except (IndexError, ZeroDivisionError):  # 0-d or empty tensors where weights belong
        raise CheckpointError(f"checkpoint tensors have impossible shapes for a {kind} "
                              f"(project_in_1.weight {tuple(state['project_in_1.weight'].shape)})") from None
    bias = "project_in_1.bias" in state
    try:
        return cfg_cls(dim=dim, num_blocks=blocks, heads=heads, ffn_expansion=expansion, bias=bias)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint shapes give an invalid {kind}: {exc}") from None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``; the first missing, unexpected or misshapen key is an error."""
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise CheckpointError(f"checkpoint is missing key {key!r}")
    for key, value in state.items():
        if key not in own:
            raise CheckpointError(f"checkpoint has unexpected key {key!r}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"checkpoint key {key!r} has shape {tuple(value.shape)}, "
                                  f"model expects {tuple(own[key].shape)}")
    model.load_state_dict(dict(state), strict=True)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, provenance: Mapping[str, object] | None = None) -> Path:
    """Write weights + model config + provenance atomically (temp file, then rename)."""
    kind = type(model).__name__
    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"cannot save a {kind}: only {', '.join(MODEL_CLASSES)} are supported")
    prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    prov.update({str(k): v for k, v in (provenance or {}).items()})
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": kind,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "provenance": prov,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_model(path: str | os.PathLike, kind: str = "FusionNet") -> tuple[nn.Module, dict]:
    """Load a ``kind`` network from our format, a training state or the released layout.

    Returns (model in eval mode, info). Everything is validated before the network is built.
    """
    model_cls, cfg_cls = MODEL_CLASSES[kind]
    path = resolve_weights(path, kind)
    obj = read_torch_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    fmt = obj.get("format")
    if fmt == FORMAT_NAME:
        if obj.get("model") != kind:
            raise CheckpointError(f"{path} holds a {str(obj.get('model'))[:40]}, not a {kind}")
        version = parse_version(obj.get("version"), path)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path} is format version {version}; this build reads up to {FORMAT_VERSION}")
        state = check_state_entries(obj.get("state_dict"), path)
        config = check_net_config(obj.get("config"), path, cfg_cls)
        prov = obj.get("provenance")
        info = {"format": FORMAT_NAME, "provenance": dict(prov) if isinstance(prov, Mapping) else {}}
    elif fmt == TRAIN_STATE_FORMAT:
        parse_version(obj.get("version"), path)
        config_values, state = unpack_training_state(obj, path, kind)
        state = check_state_entries(state, path)
        config = check_net_config(config_values, path, cfg_cls)
        info = {"format": "train-state", "provenance": {"source": str(path)}}
    elif isinstance(fmt, str):
        raise CheckpointError(f"{path} is of unknown format {fmt[:40]!r}; expected {FORMAT_NAME!r}, "
                              f"a training state or the released layout")
    else:
        # finite-value checks run before the twin comparison: NaN twins are "non-finite", not "differ"
        state = convert_released_state_dict(check_state_entries(obj, path))
        config = check_net_config(infer_config(state, kind).to_dict(), path, cfg_cls)
    check_config_matches_state(config, state, path, model_cls)
    if fmt != FORMAT_NAME and fmt != TRAIN_STATE_FORMAT:
        info = {"format": "released", "provenance": {"source": str(path)}}
    model = model_cls(config)
    load_state_strict(model, state)
    info["config"] = config.to_dict()
    return model.eval(), info


def load_fusion_net(path: str | os.PathLike) -> nn.Module:
    """The fusion network (FusionNet, or TDFusion-lite) of any supported checkpoint or built-in name
    (``default``, ``lite``), in eval mode on the CPU."""
    from .lite_weights import load_lite_if_lite  # lazy: lite_weights imports this module

    path = resolve_weights(path)
    lite = load_lite_if_lite(path)
    return lite if lite is not None else load_model(path, "FusionNet")[0]


def default_weights_path() -> Path:
    """The fusion weights that ship inside the package (trained by this project, see the README)."""
    return Path(__file__).resolve().parent / "weights" / "tdfusion_edge_default.pt"


# Built-in model names accepted wherever a weights path is (--weights lite): file in tdfusion_edge/weights/.
BUILTIN_WEIGHTS = {"default": "tdfusion_edge_default.pt", "lite": "tdfusion_edge_lite.pt",
                   "tdfusion-msrs": "tdfusion_msrs.pt"}
# The loss generator G trained together with a built-in fusion net of the same name.
BUILTIN_LOSS_GENERATORS = {"tdfusion-msrs": "tdfusion_msrs_loss_generator.pt"}


# Built-in detectors accepted wherever --det / task_weights is (--det msrs): own detector format, fp16.
BUILTIN_DETECTORS = {"msrs": "yolov8n_msrs.tdet.pt"}


def resolve_detector_name(spec: str) -> str:
    """A built-in detector name (``msrs``) → its file inside the package; anything else unchanged."""
    if spec in BUILTIN_DETECTORS and not Path(spec).exists():
        return str(Path(__file__).resolve().parent / "weights" / BUILTIN_DETECTORS[spec])
    return spec


def resolve_weights(spec: str | os.PathLike, kind: str = "FusionNet") -> Path:
    """A built-in model name (``default``, ``lite``, ``tdfusion-msrs``; for ``kind`` LossGenerator the G
    of that name) → its file inside the package; anything else → ``Path(spec)``."""
    name = str(spec)
    table = BUILTIN_LOSS_GENERATORS if kind == "LossGenerator" else BUILTIN_WEIGHTS
    if name in table and not Path(name).exists():
        return Path(__file__).resolve().parent / "weights" / table[name]
    return Path(spec)
