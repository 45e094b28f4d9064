"""What a detector sees for one input source, written as an ultralytics-layout folder.

An input source is a single modality (``ir``: the infrared image, ``vis``: the colour visible image)
or a fusion model (the built-in weights, a released ``.pth`` or a project checkpoint), fused the way
``tdfusion-edge fuse`` does: luminance through the network, per-image min/max stretch, visible chroma
re-attached. ``write_split`` renders a dataset split into ``images/<split>/`` + ``labels/<split>/``
(YOLO txt), the layout ultralytics' trainer and validator read; a rendered image is reused on a rerun.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tdfusion_edge.errors import TDFusionError

MODALITIES = ("ir", "vis")
MANIFEST = "source.json"


def builtin_fusion_weights() -> dict[str, Path]:
    """Fusion models that ship inside the package, by the name ``--weights`` accepts."""
    from tdfusion_edge.checkpoints import BUILTIN_WEIGHTS, resolve_weights

    return {name: resolve_weights(name) for name in BUILTIN_WEIGHTS}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSource:
    """One detector input: ``kind`` is ``ir``, ``vis`` or ``fusion`` (then ``weights`` is the checkpoint)."""

    kind: str
    weights: Path | None = None
    stretch: str = "minmax"

    def describe(self) -> dict:
        """JSON-ready identity of the source (the checkpoint's SHA-256, so a cache cannot mix models)."""
        if self.kind != "fusion":
            return {"kind": self.kind}
        return {"kind": "fusion", "weights": str(self.weights), "sha256": _file_sha256(self.weights),
                "stretch": self.stretch}


def resolve_source(value: str, stretch: str = "minmax") -> InputSource:
    """``ir`` / ``vis``, a built-in fusion name, a checkpoint file, or a training run folder (its fusion_net.pt)."""
    if value in MODALITIES:
        return InputSource(value)
    builtin = builtin_fusion_weights()
    if value in builtin:
        return InputSource("fusion", builtin[value], stretch)
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "fusion_net.pt"
    if not path.is_file():
        raise TDFusionError(f"fusion weights {value!r} not found: give ir, vis, a built-in name "
                            f"({', '.join(builtin)}), a checkpoint file or a training run folder")
    return InputSource("fusion", path.resolve(), stretch)


class Renderer:
    """Turns an IR/visible file pair into the 8-bit image the detector gets (gray or BGR)."""

    def __init__(self, source: InputSource, backend: str = "torch", device: str = "cpu"):
        self.source = source
        self._backend = None
        if source.kind == "fusion":
            from tdfusion_edge.export.backends import create_backend

            self._backend = create_backend(backend, weights=source.weights, device=device)

    def render(self, ir_path: Path, vis_path: Path) -> np.ndarray:
        """The detector's input image for one pair."""
        from tdfusion_edge.data.image_io import read_bgr, read_gray

        if self.source.kind == "ir":
            return read_gray(ir_path)
        if self.source.kind == "vis":
            return read_bgr(vis_path)
        from tdfusion_edge.imaging import load_pair
        from tdfusion_edge.inference import fuse_pair

        fused = fuse_pair(self._backend, load_pair(ir_path, vis_path), self.source.stretch)
        return fused.gray if fused.color is None else fused.color

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def yolo_label_lines(boxes: np.ndarray, height: int, width: int) -> list[str]:
    """N×5 [class, x1, y1, x2, y2] pixel boxes → YOLO lines ``cls cx cy w h`` normalised to the image."""
    lines = []
    for c, x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 5):
        lines.append(f"{int(c)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines


def check_manifest(out_dir: Path, source: InputSource) -> None:
    """Refuse a cache folder rendered from another source; record this source in a new one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = source.describe()
    path = out_dir / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in ("kind", "sha256", "stretch")} != {k: desc.get(k) for k in ("kind", "sha256", "stretch")}:
            raise TDFusionError(f"{out_dir} holds images of another input ({old}); use another folder")
        return
    path.write_text(json.dumps(desc, indent=1) + "\n")


def write_split(spec, split: str, source: InputSource, out_dir: str | Path, *, renderer: Renderer | None = None,
                limit: int | None = None, backend: str = "torch", progress: bool = True) -> list[str]:
    """Render ``split`` of a detection ``spec`` into ``out_dir``/images|labels/``split``; returns the stems.

    Images already there are kept (the manifest guarantees they came from the same source); labels are
    always rewritten from the dataset (cheap). ``limit`` keeps the first n samples of the split.
    """
    from tdfusion_edge.data.image_io import image_size
    from tdfusion_edge.data.scan import scan_split
    from tdfusion_edge.imaging import write_image

    if spec.task != "det":
        raise TDFusionError(f"dataset {spec.source or spec.root} is labelled for {spec.task!r}, not detection")
    out_dir = Path(out_dir)
    check_manifest(out_dir, source)
    records, report = scan_split(spec, split)
    if not report.ok:
        print(f"note: {report.summary()}", file=sys.stderr)
    records = records[:limit] if limit else records
    if not records:
        raise TDFusionError(f"split {split!r} of {spec.source or spec.root} has no usable samples")
    img_dir, lab_dir = out_dir / "images" / split, out_dir / "labels" / split
    lab_dir.mkdir(parents=True, exist_ok=True)
    own = renderer is None
    renderer = renderer or Renderer(source, backend)
    try:
        for rec in tqdm(records, desc=f"render {split}", unit="img", file=sys.stderr, disable=not progress):
            target = img_dir / f"{rec.name}.png"
            if not target.is_file():
                write_image(target, renderer.render(rec.ir, rec.vis))
            h, w = rec.size or image_size(rec.ir)
            text = "\n".join(yolo_label_lines(rec.boxes, h, w))
            (lab_dir / f"{rec.name}.txt").write_text(text + "\n" if text else "")
    finally:
        if own:
            renderer.close()
    return [r.name for r in records]


def write_data_yaml(out_dir: str | Path, names, splits) -> Path:
    """The ultralytics dataset YAML of a rendered folder (``images/<split>`` for each split)."""
    import yaml

    out_dir = Path(out_dir).resolve()
    splits = list(splits)
    # ultralytics' dataset check needs a train entry even for validation only
    keys = splits if "train" in splits else ["train", *splits]
    folders = {k: f"images/{k if k in splits else splits[0]}" for k in keys}
    cfg = {"path": str(out_dir), **folders, "names": dict(enumerate(names))}
    path = out_dir / "data.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
