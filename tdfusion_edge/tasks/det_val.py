"""Detection mAP of a detector on a rendered ultralytics-layout folder, by ultralytics' own DetectionValidator.

The numbers are ultralytics' (its letterbox and rect batches, conf 0.001, NMS IoU 0.7, greedy matching
at IoU 0.50:0.05:0.95, 101-point AP per class present in the labels, averaged over those classes), so a
detector trained by ultralytics' trainer scores here what the trainer's final validation reports at
the same ``imgsz``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tdfusion_edge.errors import TDFusionError

from tdfusion_edge.checkpoints import BUILTIN_DETECTORS


@dataclass
class ClassResult:
    """One row of the per-class table (ultralytics' summary fields)."""

    name: str
    images: int
    instances: int
    precision: float
    recall: float
    mAP50: float
    mAP50_95: float


@dataclass
class DetResult:
    """Overall and per-class detection metrics of one validation run."""

    images: int
    instances: int
    precision: float
    recall: float
    mAP50: float
    mAP50_95: float
    per_class: list[ClassResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: ``mAP50-95`` spelled as ultralytics prints it."""
        def fix(d: dict) -> dict:
            return {("mAP50-95" if k == "mAP50_95" else k): v for k, v in d.items()}

        out = fix({k: v for k, v in asdict(self).items() if k != "per_class"})
        out["per_class"] = [fix(asdict(c)) for c in self.per_class]
        return out


def resolve_detector(value: str, names: Sequence[str]):
    """``--det``: a built-in name, a model yaml (untrained), a .pt (ultralytics or the project's detector
    format) or an exported .onnx/.engine.

    Returns an ``nn.Module`` (yaml, .pt: through ``validation.detector``, the project's one safe loader of
    detector files) or the path of an exported model (run by ultralytics' AutoBackend). A detector whose
    classes differ in number from the dataset's is an error.
    """
    from tdfusion_edge.checkpoints import resolve_detector_name
    from tdfusion_edge.validation.detector import (build_from_yaml, check_detector_spec, load_detector_model,
                                                   read_model_yaml)

    value = resolve_detector_name(value)
    if Path(value).suffix == "" and not Path(value).exists():
        known = ", ".join(BUILTIN_DETECTORS) or "none yet"
        raise TDFusionError(f"detector {value!r} is not a file or a built-in name (built-in: {known}); give a "
                            f".pt, .onnx or model .yaml")
    spec = check_detector_spec(value)
    if spec.kind == "none":
        raise TDFusionError("val needs a detector: --det none has nothing to evaluate")
    if spec.kind == "exported":
        return spec.path
    if spec.kind == "yaml":
        model = build_from_yaml(read_model_yaml(spec.path), spec.path, nc=len(names))
        model.names = dict(enumerate(names))
        return model
    model = load_detector_model(spec)
    nc = int(getattr(model, "nc", 0) or len(getattr(model, "names", {}) or {}))
    if nc != len(names):
        raise TDFusionError(f"detector {value} predicts {nc} classes, the dataset has {len(names)} "
                            f"({', '.join(names)})")
    return model


def validate(data_yaml: str | Path, split: str, model, *, imgsz: int = 640, batch: int = 16,
             save_dir: str | Path, device: str = "cpu", verbose: bool = False) -> DetResult:
    """Run ultralytics' DetectionValidator on ``split`` of an ultralytics dataset YAML."""
    from ultralytics.models.yolo.detect import DetectionValidator

    args = {"data": str(data_yaml), "split": split, "imgsz": int(imgsz), "batch": int(batch), "device": device,
            "plots": False, "save_json": False, "verbose": verbose, "workers": 0}
    validator = DetectionValidator(save_dir=Path(save_dir), args=args)
    try:
        validator(model=model)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:  # bad exported model or dataset folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TDFusionError(f"validation failed: {first[:200]}") from None
    m = validator.metrics
    names = validator.names
    p, r, map50, map5095 = (float(v) for v in m.mean_results())
    rows = []
    for i, c in enumerate(m.ap_class_index):
        cp, cr, c50, c5095 = (float(v) for v in m.class_result(i))
        rows.append(ClassResult(str(names[int(c)]), int(m.nt_per_image[c]), int(m.nt_per_class[c]), cp, cr, c50, c5095))
    return DetResult(int(validator.seen), int(m.nt_per_class.sum()), p, r, map50, map5095, rows)


def format_table(result: DetResult, title: str | None = None) -> str:
    """The per-class table in ultralytics' column order, the overall row last."""
    head = f"{'class':>12} {'images':>7} {'instances':>9} {'P':>7} {'R':>7} {'mAP50':>7} {'mAP50-95':>9}"
    lines = [title] if title else []
    lines.append(head)

    def row(name, images, inst, p, r, a, b):
        return f"{name:>12} {images:>7d} {inst:>9d} {p:>7.4f} {r:>7.4f} {a:>7.4f} {b:>9.4f}"

    for c in result.per_class:
        lines.append(row(c.name, c.images, c.instances, c.precision, c.recall, c.mAP50, c.mAP50_95))
    lines.append(row("all", result.images, result.instances, result.precision, result.recall,
                     result.mAP50, result.mAP50_95))
    return "\n".join(lines)
