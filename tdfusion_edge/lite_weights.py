"""Checkpoints of TDFusion-lite in this project's format (``"model": "LiteFusionNet"``).

Same container as ``checkpoints.save_checkpoint`` (format, version, model, config, state_dict,
provenance), read with ``weights_only=True`` and validated (config types and ranges, every key and
shape against a network built on the meta device, finite values) before anything is built.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from pathlib import Path
from typing import Mapping

from .checkpoints import FORMAT_NAME, FORMAT_VERSION, atomic_torch_save, read_torch_file, resolve_weights
from .errors import CheckpointError
from .models.config import LITE_LEGACY_FIELDS, LiteFusionNetConfig
from .models.lite import LiteFusionNet
from .validation.checkpoint import check_state_entries, check_state_shapes, parse_version

MODEL_NAME = "LiteFusionNet"
_LIMITS = {"width": (4, 256), "factor": (2, 8), "refine": (1, 64), "refine_hidden": (0, 4)}


def save_lite(model: LiteFusionNet, path: str | os.PathLike, provenance: Mapping[str, object] | None = None) -> Path:
    """Write weights + config + provenance (JSON-able values) atomically."""
    prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    prov.update({str(k): v for k, v in (provenance or {}).items()})
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": MODEL_NAME,
               "config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "provenance": prov}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    return path


def _config(values: object, path: Path) -> LiteFusionNetConfig:
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{path} has no model config (found {type(values).__name__})")
    known = {f.name for f in dataclasses.fields(LiteFusionNetConfig)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise CheckpointError(f"{path}: unknown LiteFusionNet config field(s) {', '.join(unknown)}")
    values = {**LITE_LEGACY_FIELDS, **values}
    for key, (lo, hi) in _LIMITS.items():
        v = values.get(key, getattr(LiteFusionNetConfig(), key))
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise CheckpointError(f"{path}: config {key} is {str(v)[:40]!r}, expected an integer in {lo}..{hi}")
    if not isinstance(values["refine_context"], bool):
        raise CheckpointError(f"{path}: config refine_context is {str(values['refine_context'])[:40]!r}, "
                              "expected true or false")
    try:
        return LiteFusionNetConfig.from_dict(dict(values))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid LiteFusionNet config: {exc}") from None


def _load_payload(obj: Mapping, path: Path) -> tuple[LiteFusionNet, dict]:
    version = parse_version(obj.get("version"), path)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} is format version {version}; this build reads up to {FORMAT_VERSION}")
    config = _config(obj.get("config"), path)
    state = check_state_entries(obj.get("state_dict"), path)
    check_state_shapes(lambda: LiteFusionNet(config), state, path)
    model = LiteFusionNet(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    prov = obj.get("provenance")
    info = {"format": FORMAT_NAME, "config": config.to_dict(),
            "provenance": dict(prov) if isinstance(prov, Mapping) else {}}
    return model.eval(), info


def load_lite(path: str | os.PathLike) -> tuple[LiteFusionNet, dict]:
    """TDFusion-lite from ``path`` (or the built-in name ``lite``); returns (model in eval mode, info)."""
    path = resolve_weights(path)
    obj = read_torch_file(path)
    if not (isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME and obj.get("model") == MODEL_NAME):
        raise CheckpointError(f"{path} is not a TDFusion-lite checkpoint")
    return _load_payload(obj, path)


def load_lite_if_lite(path: str | os.PathLike) -> LiteFusionNet | None:
    """The lite network when ``path`` holds one, else None (the caller loads it as a FusionNet)."""
    path = Path(path)
    if not path.is_file():
        return None
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME and obj.get("model") == MODEL_NAME:
        return _load_payload(obj, path)[0]
    return None


def lite_weights_path() -> Path:
    """The distilled TDFusion-lite weights shipped in the package (``--weights lite``)."""
    return resolve_weights("lite")
