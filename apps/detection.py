"""YOLOv8 detection on the fused frame: an ultralytics model (.pt / .yaml / own format, loaded by
``tdfusion_edge.validation.detector`` so that no file runs code) or an exported one (.onnx / .engine,
run by ultralytics' AutoBackend), or nothing at all (``--det none``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.detector import check_detector_spec, load_detector_model


@dataclass
class Detections:
    """Boxes in output-frame pixels (x1, y1, x2, y2), confidences, class ids and the class names."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    def name(self, cls: int) -> str:
        return str(self.names.get(int(cls), int(cls)))

    def to_records(self) -> list[dict]:
        """JSON-ready list: class id, name, confidence, box."""
        return [{"cls": int(c), "name": self.name(c), "conf": round(float(s), 4),
                 "box": [round(float(v), 1) for v in b]}
                for b, s, c in zip(self.boxes, self.scores, self.classes)]


class NoDetector:
    """``--det none``: fusion only."""

    name = "none"

    def detect(self, bgr: np.ndarray) -> Detections:
        return Detections()

    def close(self) -> None:
        pass


class YoloDetector:
    """An ultralytics detection model; ``imgsz`` must match a static exported engine."""

    def __init__(self, weights: str, imgsz: int | tuple[int, int] | None = None, conf: float = 0.25,
                 iou: float = 0.45, device: str = "auto", half: bool = False):
        try:
            from ultralytics import YOLO
        except ImportError:
            raise TDFusionError("detection needs the 'ultralytics' package (pip install ultralytics), "
                                "or run with --det none") from None
        self.name = Path(weights).name
        spec = check_detector_spec(weights, deep=False)  # refuses unsafe .pt files and bad yamls before any load
        if spec.kind == "exported":
            try:
                self.model = YOLO(spec.path, task="detect")
            except Exception as exc:  # a damaged or foreign .onnx/.engine
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise TDFusionError(f"cannot load detector {weights!r}: {first[:160]}") from None
        else:
            self.model = _wrap_for_predict(YOLO, load_detector_model(spec))
        self.imgsz = imgsz
        self.conf, self.iou, self.half = conf, iou, half
        self.device = None if device == "auto" else device.replace("cuda:", "")
        names = getattr(self.model, "names", None) or {}
        self.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
        # The first prediction builds the predictor and fuses layers (seconds on a CPU): do it now,
        # not on the first live frame.
        self.detect(np.zeros((64, 64, 3), np.uint8))

    def detect(self, bgr: np.ndarray) -> Detections:
        """Detect on one BGR uint8 frame."""
        extra = {"half": True} if self.half else {}  # recent ultralytics warns on an explicit half=False
        result = self.model.predict(bgr, imgsz=self.imgsz or max(bgr.shape[:2]), conf=self.conf, iou=self.iou,
                                    device=self.device, verbose=False, **extra)[0]
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Detections(names=self.names)
        return Detections(boxes.xyxy.cpu().numpy().astype(np.float32), boxes.conf.cpu().numpy().astype(np.float32),
                          boxes.cls.cpu().numpy().astype(np.int64), self.names)

    def close(self) -> None:
        self.model = None


def _wrap_for_predict(yolo_cls, model):
    """An ultralytics ``YOLO`` object around an already loaded DetectionModel (its predict pipeline)."""
    # YOLO(...) only builds from a path; build the smallest shipped net and swap ours in, so the
    # checkpoint itself never reaches ultralytics' (unsafe) loader.
    wrapper = yolo_cls("yolov8n.yaml", task="detect")
    wrapper.model = model
    wrapper.ckpt = {}
    wrapper.ckpt_path = getattr(model, "pt_path", None)
    return wrapper


def create_detector(spec: str | None, imgsz=None, conf: float = 0.25, iou: float = 0.45, device: str = "auto",
                    half: bool = False):
    """'none' (or empty) → NoDetector; anything else is a detector file or yaml (checked first)."""
    if not spec or spec.lower() == "none":
        return NoDetector()
    return YoloDetector(spec, imgsz=imgsz, conf=conf, iou=iou, device=device, half=half)
