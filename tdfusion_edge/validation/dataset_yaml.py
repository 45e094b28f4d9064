"""Dataset YAML values (types, ranges, names, splits) and, for training, labels that exist.

``check_dataset_values`` runs on the parsed mapping before a ``DatasetSpec`` is built from it, so a
wrong-typed value is one line naming the key (never a ``ValueError`` from ``int('abc')``, and never
``keep_empty: "no"`` read as true). ``check_labels_present`` runs before a training run builds
anything: a task network cannot learn from a split that has no label files.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from tdfusion_edge.errors import TDFusionError

log = logging.getLogger("tdfusion_edge.data")

MAX_SIDE = 8192  # pixels: a task view or crop beyond this is a typo, not a dataset
MAX_SYNTHETIC = 1_000_000
COMMON_KEYS = ("path", "layout", "task", "train", "val", "test", "names", "task_size", "crop_size", "keep_empty")
FILE_KEYS = ("subsample", "verify", "folders", "ignore_index")
SYNTHETIC_KEYS = ("image_size", "seed", "condition", "objects")
# keys of ultralytics dataset YAMLs that mean nothing here; accepted silently so such a file can be reused
ULTRALYTICS_KEYS = ("nc", "download", "yaml_file", "channels")
TASKS = ("seg", "det")


class DatasetConfigError(TDFusionError):
    """A dataset YAML value of the wrong type or out of range, or a split that cannot serve the task."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(cfg: Mapping, key: str, where: str, lo: int, hi: int | None = None) -> None:
    if key not in cfg or cfg[key] is None:
        return
    v = cfg[key]
    if not _is_int(v):
        raise DatasetConfigError(f"{where}: {key} must be a whole number, got {_show(v)}")
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise DatasetConfigError(f"{where}: {key} must be {bound}, got {v}")


def _choice(cfg: Mapping, key: str, where: str, allowed: tuple[str, ...]) -> None:
    if key in cfg and cfg[key] is not None and cfg[key] not in allowed:
        raise DatasetConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got {_show(cfg[key])}")


def _size(cfg: Mapping, key: str, where: str, lo: int = 1) -> None:
    if key not in cfg or cfg[key] is None:
        return
    v = cfg[key]
    pair = (v, v) if _is_int(v) else v
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_int(s) for s in pair)):
        raise DatasetConfigError(f"{where}: {key} must be [height, width] in whole pixels, got {_show(v)}")
    if not all(lo <= s <= MAX_SIDE for s in pair):
        raise DatasetConfigError(f"{where}: {key} sides must be between {lo} and {MAX_SIDE} pixels, got {_show(v)}")


def _bool(cfg: Mapping, key: str, where: str) -> None:
    if key in cfg and cfg[key] is not None and not isinstance(cfg[key], bool):
        raise DatasetConfigError(f"{where}: {key} must be true or false, got {_show(cfg[key])}")


def _names(raw: Any, where: str) -> None:
    if raw is None:
        return
    if isinstance(raw, Mapping):
        if not raw or not all(_is_int(k) or (isinstance(k, str) and k.isdigit()) for k in raw):
            raise DatasetConfigError(f"{where}: names as a mapping must be {{id: name}} with ids 0..n-1")
        values = list(raw.values())
    elif isinstance(raw, (list, tuple)) and raw:
        values = list(raw)
    else:
        raise DatasetConfigError(f"{where}: names must be a non-empty list or an {{id: name}} mapping, "
                                 f"got {_show(raw)}")
    bad = [v for v in values if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        raise DatasetConfigError(f"{where}: class names must be text, got {_show(bad[0])}")


def _split_entry(key: str, entry: Any, where: str) -> None:
    if isinstance(entry, str):
        if not entry.strip():
            raise DatasetConfigError(f"{where}: {key} is an empty split name")
        return
    if not isinstance(entry, Mapping):
        raise DatasetConfigError(f"{where}: {key} must be a split name, a .txt list, a mapping "
                                 f"{{split, list, fraction, seed}} or a list of those, got {_show(entry)}")
    for k in ("split", "list"):
        if k in entry and not isinstance(entry[k], str):
            raise DatasetConfigError(f"{where}: {key}.{k} must be text, got {_show(entry[k])}")
    frac = entry.get("fraction")
    if frac is not None:
        ok = (isinstance(frac, (list, tuple)) and len(frac) == 2
              and all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) for f in frac)
              and 0 <= frac[0] < frac[1] <= 1)
        if not ok:
            raise DatasetConfigError(f"{where}: {key}.fraction must be [start, end] with 0 ≤ start < end ≤ 1, "
                                     f"got {_show(frac)}")
    seed = entry.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise DatasetConfigError(f"{where}: {key}.seed must be a whole number ≥ 0, got {_show(seed)}")


def _splits(cfg: Mapping, where: str, synthetic: bool) -> None:
    for key in ("train", "val", "test"):
        if key not in cfg or cfg[key] is None:
            continue
        raw = cfg[key]
        if synthetic:
            if not _is_int(raw) or not 1 <= raw <= MAX_SYNTHETIC:
                raise DatasetConfigError(f"{where}: synthetic {key} must be a sample count between 1 and "
                                         f"{MAX_SYNTHETIC}, got {_show(raw)}")
            continue
        entries = raw if isinstance(raw, list) else [raw]
        if not entries:
            raise DatasetConfigError(f"{where}: {key} is an empty list")
        for entry in entries:
            _split_entry(key, entry, where)


def check_dataset_values(cfg: Any, where: str) -> None:
    """Raise ``DatasetConfigError`` on the first dataset-YAML value of the wrong type or out of range."""
    if not isinstance(cfg, Mapping):
        raise DatasetConfigError(f"{where}: expected a mapping of keys, got {type(cfg).__name__}")
    bad_keys = [k for k in cfg if not isinstance(k, str)]
    if bad_keys:
        raise DatasetConfigError(f"{where}: keys must be text, got {_show(bad_keys[0])}")
    _choice(cfg, "task", where, TASKS)
    layout = cfg.get("layout", "paired")
    if not isinstance(layout, str):
        raise DatasetConfigError(f"{where}: layout must be a layout name, got {_show(layout)}")
    synthetic = layout.lower() == "synthetic"
    known = COMMON_KEYS + (SYNTHETIC_KEYS if synthetic else FILE_KEYS) + ULTRALYTICS_KEYS
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        log.warning("%s: ignoring unknown key(s) %s (known: %s)", where, ", ".join(unknown),
                    ", ".join(COMMON_KEYS + (SYNTHETIC_KEYS if synthetic else FILE_KEYS)))
    if "path" in cfg and not isinstance(cfg["path"], str):
        raise DatasetConfigError(f"{where}: path must be a folder path, got {_show(cfg['path'])}")
    _names(cfg.get("names"), where)
    _size(cfg, "task_size", where, lo=8)
    _int(cfg, "crop_size", where, 8, MAX_SIDE)
    _bool(cfg, "keep_empty", where)
    _splits(cfg, where, synthetic)
    if synthetic:
        _size(cfg, "image_size", where, lo=8)
        _int(cfg, "seed", where, 0)
        _choice(cfg, "condition", where, ("random", "day", "night"))
        objects = cfg.get("objects")
        if objects is not None and not _is_int(objects) and not (
                isinstance(objects, (list, tuple)) and len(objects) == 2 and all(_is_int(o) for o in objects)):
            raise DatasetConfigError(f"{where}: objects must be [min, max] whole counts, got {_show(objects)}")
        return
    _int(cfg, "subsample", where, 1)
    _int(cfg, "ignore_index", where, 0, 255)
    _choice(cfg, "verify", where, ("header", "full", "none"))
    folders = cfg.get("folders")
    if folders is not None:
        if not isinstance(folders, Mapping):
            raise DatasetConfigError(f"{where}: folders must be a mapping {{ir, vis, label, label_kind}}, "
                                     f"got {_show(folders)}")
        for k, v in folders.items():
            if not isinstance(v, str) or not v.strip():
                raise DatasetConfigError(f"{where}: folders.{k} must be a folder template, got {_show(v)}")


def check_labels_present(spec: Any, split: str) -> None:
    """A training split must carry labels for its task: one line naming where they were looked for."""
    from tdfusion_edge.data.scan import LABEL_SUFFIXES, split_folders

    if spec.layout == "synthetic":
        return
    kind = spec.folders.label_kind
    where = spec.source or spec.root
    need = {"seg": "segmentation masks", "det": "box labels"}[spec.task]
    looked = []
    for source in spec.split_sources(split):
        label_dir = split_folders(spec, source)[2]
        if label_dir is None or kind == "none":
            break
        looked.append(str(label_dir))
        suffixes = LABEL_SUFFIXES[kind]
        if label_dir.is_dir() and any(p.suffix.lower() in suffixes for p in label_dir.iterdir()):
            return
    hint = (f"looked in {', '.join(looked)}" if looked
            else "the dataset names no label folder (folders: {label: ...})")
    raise DatasetConfigError(f"dataset {where}: split {split!r} has no {need} for task {spec.task} ({hint}); "
                             f"training needs them — for a paired folder put them in {{split}}/"
                             f"{'masks' if spec.task == 'seg' else 'labels'}/, or train on --data synthetic")
