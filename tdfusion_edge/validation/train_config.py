"""Training-config values (``--set`` overrides, config files, a resumed run's config), checked before use.

Every key's type, range and allowed names are checked on the raw mapping, before a ``TrainConfig`` or
anything else is built, so ``--set fusion_net=5``, ``--set task_size=[0,0]`` or a tampered config
inside a checkpoint is one line naming the key. A resumed config is untrusted input like any file.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from tdfusion_edge.errors import TDFusionError

from .checkpoint import MAX_BLOCKS, MAX_DIM, MAX_FFN_EXPANSION, MAX_HEADS

MAX_SIDE = 8192  # pixels of a task view or crop
MAX_COUNT = 10**9  # steps, epochs, samples: beyond this a value is a typo


class ConfigError(TDFusionError):
    """A training configuration that cannot be used (unknown key, bad value, bad file)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(where: str, v: Any, lo: int, hi: int = MAX_COUNT) -> None:
    if not _is_int(v):
        raise ConfigError(f"{where} must be a whole number, got {_show(v)}")
    if not lo <= v <= hi:
        raise ConfigError(f"{where} must be between {lo} and {hi}, got {v}")


def _positive(where: str, v: Any) -> None:
    if not _is_number(v) or v <= 0:
        raise ConfigError(f"{where} must be a positive finite number, got {_show(v)}")


def _non_negative(where: str, v: Any) -> None:
    if not _is_number(v) or v < 0:
        raise ConfigError(f"{where} must be a finite number ≥ 0, got {_show(v)}")


def _text(where: str, v: Any) -> None:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where} must be text (a name or a path), got {_show(v)}")


def _bool(where: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{where} must be true or false, got {_show(v)}")


def _hw(where: str, v: Any) -> None:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(s) for s in v)):
        raise ConfigError(f"{where} must be [height, width] in whole pixels, got {_show(v)}")
    if not all(8 <= s <= MAX_SIDE for s in v):
        raise ConfigError(f"{where} sides must be between 8 and {MAX_SIDE} pixels, got {list(v)}")


def check_net_size(where: str, v: Any) -> None:
    """A network size mapping: known keys, whole positive sizes within the checkpoint bounds, heads | dim."""
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where} must be a mapping such as {{dim: 16, num_blocks: 2, heads: 8}}, got {_show(v)}")
    known = ("dim", "num_blocks", "heads", "ffn_expansion", "bias")
    unknown = sorted(str(k) for k in v if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    for key, top in (("dim", MAX_DIM), ("num_blocks", MAX_BLOCKS), ("heads", MAX_HEADS)):
        if key in v:
            _int(f"{where}.{key}", v[key], 1, top)
    if "ffn_expansion" in v and (not _is_number(v["ffn_expansion"]) or not 0 < v["ffn_expansion"] <= MAX_FFN_EXPANSION):
        raise ConfigError(f"{where}.ffn_expansion must be a number in (0, {MAX_FFN_EXPANSION:g}], "
                          f"got {_show(v['ffn_expansion'])}")
    if "bias" in v:
        _bool(f"{where}.bias", v["bias"])
    dim, heads = v.get("dim", 16), v.get("heads", 8)
    if dim % heads:
        raise ConfigError(f"{where}: heads {heads} must divide dim {dim}")


def _class_weights(where: str, v: Any) -> None:
    if v is None or v in ("none", "enet"):
        return
    if not (isinstance(v, (list, tuple)) and v and all(_is_number(w) and w >= 0 for w in v)):
        raise ConfigError(f"{where} must be none, enet or a list of non-negative per-class weights, got {_show(v)}")


def _optional(check):
    def run(where: str, v: Any) -> None:
        if v is not None:
            check(where, v)
    return run


def _list_of_text(where: str, v: Any) -> None:
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"{where} must be a list of names, got {_show(v)}")


def _mapping(where: str, v: Any) -> None:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where} must be a mapping of options, got {_show(v)}")


def _count(lo: int, hi: int = MAX_COUNT):
    return lambda where, v: _int(where, v, lo, hi)


# key → check of its value; choices (task, g_update, ...) are left to TrainConfig.validate, which names them
CHECKS = {
    "data": _text, "data_root": _optional(_text), "task_weights": _optional(_text), "num_classes": _optional(_count(1, 10_000)),
    "class_weights": _class_weights, "synthetic": _optional(_mapping), "crop_size": _optional(_count(8, MAX_SIDE)),
    "task_size": _optional(_hw), "num_workers": _count(0, 256),
    "epochs": _count(1), "meta_steps": _count(0), "fusion_steps": _count(0), "batch_size": _count(1, 65536),
    "swap": _bool, "lr": _positive, "lr_step": _count(1), "lr_gamma": _positive, "inner_lr": _optional(_positive),
    "g_lr": _positive,
    "alpha": _non_negative,
    "ablations": _list_of_text, "init_fusion": _optional(_text),
    "fusion_net": check_net_size, "loss_generator": check_net_size,
    "seed": _count(0, 2**63 - 1), "eval_every": _count(1), "eval_samples": _count(0), "metric_samples": _count(0),
    "weight_map_samples": _count(0, 64), "checkpoint_every": _count(1), "log_every": _count(1),
    "keep_epoch_checkpoints": _bool, "remove_brightness_mode": _bool,
}


def check_train_values(values: Mapping[str, Any], source: str = "") -> None:
    """Raise ``ConfigError`` on the first value of the wrong type or out of range; ``source`` prefixes messages.

    Unknown keys are left to ``TrainConfig.from_dict`` (which lists the known ones).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source or 'config'}: expected a mapping of config keys, got {type(values).__name__}")
    prefix = f"{source}: " if source else ""
    for key, value in values.items():
        check = CHECKS.get(key)
        if check is not None:
            check(f"{prefix}{key}", value)
