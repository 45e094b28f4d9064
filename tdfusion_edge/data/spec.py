"""Dataset YAML (ultralytics style) → DatasetSpec.

Keys::

    path: /data/MSRS          # root; relative paths are taken from the YAML file's folder
    layout: msrs              # msrs | fmb | m3fd | llvip | paired | synthetic
    task: seg                 # seg | det (default: the layout's)
    train: train              # a split: a name put into the layout's {split} (a folder for "paired"),
    val: test                 #   a .txt list of file stems (one a line), a mapping
                              #   {split: NAME, list: FILE, fraction: [a, b], seed: S} (fraction keeps
                              #   the slice [a, b) of the stems shuffled with seed S: disjoint slices of
                              #   one seed make a random train/val partition), or a list of these
    names: [unlabelled, car]  # list or {id: name}; default: the layout's classes
    task_size: [240, 320]     # (h, w) of the task view; default: the layout's (released sizes)
    crop_size: 256            # side of the fusion-loss crop
    subsample: 1              # keep every n-th pair (the paper's LLVIP protocol uses 10)
    keep_empty: false         # keep samples whose label has no object / no labelled pixel
    verify: header            # header (read image headers only) | full (decode every image) | none
    folders: {ir: ..., vis: ..., label: ..., label_kind: ...}   # override the layout's folders

For ``layout: synthetic`` a split is a sample count (``train: 64``) and ``image_size: [h, w]``,
``seed``, ``condition`` (random | day | night) and ``objects`` ([min, max] people and cars per scene,
default [2, 5]) configure ``make_scene``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.dataset_yaml import check_dataset_values

from .layouts import LABEL_KINDS, PAIRED_LABEL_FOLDERS, Layout, get_layout

TASKS = ("seg", "det")
SPLIT_KEYS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSource:
    """One part of a split: the name put into ``{split}`` and an optional list file of stems."""

    split: str
    list_file: Path | None = None
    fraction: tuple[float, float] | None = None  # keep this slice of a seeded shuffle of the stems
    seed: int = 0


@dataclass
class DatasetSpec:
    """Everything needed to build the dataset of one split."""

    layout: str
    task: str
    root: Path
    names: tuple[str, ...]
    folders: Layout
    splits: dict[str, list[SplitSource]] = field(default_factory=dict)
    task_size: tuple[int, int] = (256, 320)
    crop_size: int = 256
    subsample: int = 1
    keep_empty: bool = False
    verify: str = "header"
    ignore_index: int = 255
    synthetic: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes the task network predicts (background included for segmentation)."""
        return len(self.names)

    def split_sources(self, split: str) -> list[SplitSource]:
        """The sources of ``split``; a one-line error naming the splits that exist otherwise."""
        if split not in self.splits:
            raise TDFusionError(f"dataset {self.source or self.root} has no split {split!r} "
                                f"(has: {', '.join(self.splits) or 'none'})")
        return self.splits[split]


def _names(raw: Any, default: tuple[str, ...], where: str) -> tuple[str, ...]:
    if raw is None:
        return default
    if isinstance(raw, dict):
        keys = sorted(int(k) for k in raw)
        if keys != list(range(len(keys))):
            raise TDFusionError(f"{where}: names must be numbered 0..n-1")
        return tuple(str(raw[k] if k in raw else raw[str(k)]) for k in keys)
    if isinstance(raw, (list, tuple)) and raw:
        return tuple(str(n) for n in raw)
    raise TDFusionError(f"{where}: names must be a non-empty list or an {{id: name}} mapping")


def _size(raw: Any, default: tuple[int, int], key: str, where: str) -> tuple[int, int]:
    if raw is None:
        return default
    if isinstance(raw, int):
        raw = (raw, raw)
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and all(isinstance(v, int) and v > 0 for v in raw)):
        raise TDFusionError(f"{where}: {key} must be [height, width] in pixels")
    return int(raw[0]), int(raw[1])


def _object_range(raw: Any, where: str) -> tuple[int, int]:
    if isinstance(raw, int):
        raw = (raw, raw)
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and all(isinstance(v, int) for v in raw)
            and 0 <= raw[0] <= raw[1]):
        raise TDFusionError(f"{where}: objects must be [min, max] counts with 0 <= min <= max")
    return int(raw[0]), int(raw[1])


def _split_sources(key: str, raw: Any, root: Path, where: str) -> list[SplitSource]:
    entries = raw if isinstance(raw, list) else [raw]
    out = []
    for e in entries:
        if isinstance(e, dict):
            unknown = set(e) - {"split", "list", "fraction", "seed"}
            if unknown:
                raise TDFusionError(f"{where}: unknown split keys {sorted(unknown)} (split, list, fraction, seed)")
            lst, frac = e.get("list"), e.get("fraction")
            if frac is not None and not (isinstance(frac, (list, tuple)) and len(frac) == 2
                                         and 0 <= float(frac[0]) < float(frac[1]) <= 1):
                raise TDFusionError(f"{where}: fraction must be [start, end] with 0 ≤ start < end ≤ 1")
            out.append(SplitSource(str(e.get("split", key)), _resolve(root, lst) if lst else None,
                                   (float(frac[0]), float(frac[1])) if frac is not None else None,
                                   int(e.get("seed", 0))))
        elif isinstance(e, str) and e.endswith(".txt"):
            out.append(SplitSource(key, _resolve(root, e)))
        elif isinstance(e, str):
            out.append(SplitSource(e.strip("/")))
        else:
            raise TDFusionError(f"{where}: {key} must be a split name, a .txt list or a list of those")
    return out


def _resolve(base: Path, p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else base / p


def _paired_folders(layout: Layout, task: str, overrides: dict) -> Layout:
    label, kind = PAIRED_LABEL_FOLDERS[task]
    return layout.with_folders(label=overrides.get("label", label), label_kind=overrides.get("label_kind", kind))


def spec_from_dict(cfg: dict, base_dir: Path | None = None, source: Path | None = None,
                   where: str | None = None) -> DatasetSpec:
    """Build a DatasetSpec from the parsed YAML mapping; relative paths are taken from ``base_dir``.

    Every value is type- and range-checked first (``validation.dataset_yaml``); ``where`` names the
    mapping in messages (default: the YAML file).
    """
    where = where or str(source or "dataset config")
    check_dataset_values(cfg, where)
    base_dir = base_dir or Path.cwd()
    layout_name = str(cfg.get("layout", "paired")).lower()
    root = _resolve(base_dir, cfg.get("path", ".")).absolute()
    verify = str(cfg.get("verify", "header"))
    if verify not in ("header", "full", "none"):
        raise TDFusionError(f"{where}: verify must be header, full or none")

    if layout_name == "synthetic":
        task = str(cfg.get("task", "seg"))
        if task not in TASKS:
            raise TDFusionError(f"{where}: task must be one of {', '.join(TASKS)}")
        from .synthetic import DEFAULT_OBJECTS
        from .synthetic_pairs import synthetic_names

        splits = {}
        for k in SPLIT_KEYS:
            if k in cfg:
                if not isinstance(cfg[k], int) or cfg[k] <= 0:
                    raise TDFusionError(f"{where}: synthetic {k} must be a positive sample count")
                splits[k] = [SplitSource(k)]
        image_size = _size(cfg.get("image_size"), (96, 128), "image_size", where)
        objects = _object_range(cfg.get("objects", DEFAULT_OBJECTS), where)
        return DatasetSpec(
            layout="synthetic", task=task, root=root, names=_names(cfg.get("names"), synthetic_names(task), where),
            folders=Layout("", "", None, "none", task, image_size), splits=splits,
            task_size=_size(cfg.get("task_size"), image_size, "task_size", where),
            crop_size=int(cfg.get("crop_size", 64)), keep_empty=bool(cfg.get("keep_empty", True)),
            synthetic={"image_size": image_size, "seed": int(cfg.get("seed", 0)),
                       "condition": str(cfg.get("condition", "random")), "objects": objects,
                       "lengths": {k: int(cfg[k]) for k in splits}},
            source=source)

    layout = get_layout(layout_name)
    task = str(cfg.get("task", layout.task))
    if task not in TASKS:
        raise TDFusionError(f"{where}: task must be one of {', '.join(TASKS)}")
    overrides = dict(cfg.get("folders") or {})
    unknown = set(overrides) - {"ir", "vis", "label", "label_kind"}
    if unknown:
        raise TDFusionError(f"{where}: unknown folders keys {sorted(unknown)} (use ir, vis, label, label_kind)")
    folders = _paired_folders(layout, task, overrides) if layout_name == "paired" else layout
    folders = replace(folders.with_folders(**{k: str(v) for k, v in overrides.items()}), task=task)
    if folders.label_kind not in LABEL_KINDS:
        raise TDFusionError(f"{where}: label_kind must be one of {', '.join(LABEL_KINDS)}")
    splits = {k: _split_sources(k, cfg[k], root, where) for k in SPLIT_KEYS if cfg.get(k) is not None}
    subsample = int(cfg.get("subsample", 1))
    if subsample < 1:
        raise TDFusionError(f"{where}: subsample must be ≥ 1")
    return DatasetSpec(
        layout=layout_name, task=task, root=root, names=_names(cfg.get("names"), layout.names, where),
        folders=folders, splits=splits, task_size=_size(cfg.get("task_size"), layout.task_size, "task_size", where),
        crop_size=int(cfg.get("crop_size", 256)), subsample=subsample, keep_empty=bool(cfg.get("keep_empty", False)),
        verify=verify, ignore_index=int(cfg.get("ignore_index", 255)), source=source)


def load_dataset_yaml(path: str | Path, root: str | Path | None = None) -> DatasetSpec:
    """Parse a dataset YAML; ``root`` overrides its ``path``.

    A bare name that is not a file here (``msrs.yaml``) is looked up among the packaged example configs,
    whose relative ``path`` is then taken from the current directory (a user's YAML: from its folder).
    """
    from importlib import resources

    path = Path(path).expanduser()
    configs = Path(str(resources.files("tdfusion_edge") / "configs"))
    if not path.is_file():
        if path.parent != Path(".") or not (configs / path.name).is_file():
            raise TDFusionError(f"dataset config {path} not found")
        path = configs / path.name
    base_dir = Path.cwd() if path.resolve().parent == configs.resolve() else path.parent
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TDFusionError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if root is not None:
        if not Path(root).expanduser().is_dir():
            raise TDFusionError(f"dataset root {root} is not a folder")
        cfg = {**(cfg or {}), "path": str(Path(root).expanduser().absolute())}
    return spec_from_dict(cfg or {}, base_dir=base_dir, source=path)
