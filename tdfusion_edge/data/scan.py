"""Scanning a split up front: pair IR and visible files by stem, check images and labels, count problems."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tdfusion_edge.errors import ImageReadError, TDFusionError

from .image_io import image_size, read_bgr, read_gray, read_mask
from .labels import LabelError, check_mask, clip_boxes, parse_voc, parse_yolo
from .layouts import IMAGE_SUFFIXES
from .report import ScanReport
from .spec import DatasetSpec, SplitSource

log = logging.getLogger(__name__)
LABEL_SUFFIXES = {"mask": IMAGE_SUFFIXES, "voc": (".xml",), "yolo": (".txt",)}


@dataclass
class PairRecord:
    """One usable sample: its files and, for detection, its boxes (N×5 pixels of the original image)."""

    name: str
    ir: Path
    vis: Path
    label: Path | None = None
    boxes: np.ndarray | None = None
    size: tuple[int, int] | None = None  # (h, w) when the scan read it


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes:
            out.setdefault(p.stem, p)
    return out


def _folder(root: Path, template: str, split: str) -> Path:
    parts = [p for p in template.replace("{split}", split).split("/") if p not in ("", ".")]
    return root.joinpath(*parts)


def split_folders(spec: DatasetSpec, source: SplitSource) -> tuple[Path, Path, Path | None]:
    """(IR folder, visible folder, label folder or None) of one split source."""
    f = spec.folders
    split = source.split
    if spec.layout == "paired" and not _folder(spec.root, f.ir, split).is_dir():
        split = ""  # a paired dataset without split folders keeps ir/ and vis/ at its root
    ir, vis = _folder(spec.root, f.ir, split), _folder(spec.root, f.vis, split)
    if spec.layout == "paired" and not vis.is_dir() and f.vis.endswith("/vis"):
        vis = vis.with_name("vi")  # the other common spelling (RoadScene, MSRS)
    return ir, vis, (_folder(spec.root, f.label, split) if f.label else None)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise TDFusionError(f"split list {path} not found")
    return [Path(ln.split()[0]).stem for ln in path.read_text().splitlines() if ln.strip()]


def _check_images(rec: PairRecord, verify: str, report: ScanReport) -> bool:
    if verify == "none":
        return True
    try:
        if verify == "full":
            s_ir, s_vis = read_gray(rec.ir).shape[:2], read_bgr(rec.vis).shape[:2]
        else:
            s_ir, s_vis = image_size(rec.ir), image_size(rec.vis)
    except ImageReadError as exc:
        report.add("unreadable_image", rec.name, str(exc))
        return False
    if s_ir != s_vis:
        report.add("size_mismatch", rec.name, f"ir {s_ir[1]}x{s_ir[0]} vs visible {s_vis[1]}x{s_vis[0]}")
        return False
    rec.size = s_ir
    return True


def _check_label(rec: PairRecord, spec: DatasetSpec, kind: str, report: ScanReport) -> bool:
    try:
        if kind == "mask":
            if spec.verify == "none":
                return True
            try:
                mask = read_mask(rec.label)
            except ImageReadError as exc:
                report.add("invalid_label", rec.name, str(exc))
                return False
            if rec.size is not None and mask.shape[:2] != rec.size:
                report.add("size_mismatch", rec.name, f"mask {mask.shape[1]}x{mask.shape[0]} vs image "
                                                      f"{rec.size[1]}x{rec.size[0]}")
                return False
            problem = check_mask(mask, spec.num_classes, spec.ignore_index)
            if problem == "empty" and not spec.keep_empty:
                report.add("empty_label", rec.name, "no labelled pixel")
                return False
            if problem and problem != "empty":
                report.add("invalid_label", rec.name, problem)
                return False
            return True
        size = rec.size or image_size(rec.ir)
        if kind == "voc":
            boxes, dropped = parse_voc(rec.label, spec.names)
        else:
            boxes, dropped = parse_yolo(rec.label, size[0], size[1], spec.num_classes), 0
        boxes, tiny = clip_boxes(boxes, size[0], size[1])
        report.dropped_objects += dropped + tiny
    except LabelError as exc:
        report.add("invalid_label", rec.name, str(exc))
        return False
    except ImageReadError as exc:
        report.add("unreadable_image", rec.name, str(exc))
        return False
    if len(boxes) == 0 and not spec.keep_empty:
        report.add("empty_label", rec.name, "no object")
        return False
    rec.boxes, rec.size = boxes, size
    return True


def scan_split(spec: DatasetSpec, split: str) -> tuple[list[PairRecord], ScanReport]:
    """Usable records of ``split`` (each source's sorted by name) and the report of everything skipped."""
    report = ScanReport(split=split)
    kind = spec.folders.label_kind
    sources = [(source, *split_folders(spec, source)) for source in spec.split_sources(split)]
    if spec.layout == "paired" and not any(lab is not None and lab.is_dir() for *_, lab in sources):
        kind = "none"  # labels are optional in a paired folder: fusion-only samples
        log.info("%s: no label folder, samples carry no task targets", split)
    records: list[PairRecord] = []
    any_folder = False
    for source, ir_dir, vis_dir, label_dir in sources:
        any_folder |= ir_dir.is_dir() or vis_dir.is_dir()
        irs, viss = _files_by_stem(ir_dir, IMAGE_SUFFIXES), _files_by_stem(vis_dir, IMAGE_SUFFIXES)
        labels = _files_by_stem(label_dir, LABEL_SUFFIXES[kind]) if label_dir is not None and kind != "none" else {}
        stems = sorted(set(irs) | set(viss))
        if source.list_file is not None:
            stems = _read_list(source.list_file)
        stems = stems[::spec.subsample]
        if source.fraction is not None:
            order = np.random.default_rng(source.seed).permutation(len(stems))
            a, b = (round(f * len(stems)) for f in source.fraction)
            stems = [stems[i] for i in sorted(order[a:b])]
        report.found += len(stems)
        for stem in stems:
            if stem not in irs or stem not in viss:
                missing = "IR and visible" if stem not in irs and stem not in viss else \
                    ("visible" if stem not in viss else "IR")
                report.add("missing_partner", stem, f"no {missing} file")
                continue
            rec = PairRecord(stem, irs[stem], viss[stem])
            if kind != "none":
                if stem not in labels:
                    report.add("missing_label", stem, f"no label in {label_dir}")
                    continue
                rec.label = labels[stem]
            if not _check_images(rec, spec.verify, report):
                continue
            if kind != "none" and not _check_label(rec, spec, kind, report):
                continue
            records.append(rec)
    if not any_folder:
        folders = ", ".join(str(p) for p in split_folders(spec, spec.split_sources(split)[0])[:2])
        raise TDFusionError(f"no image folders for split {split!r} of {spec.source or spec.root} "
                            f"(looked for {folders})")
    report.usable = len(records)
    return records, report
