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


class OnnxYoloDetector:
    """YOLOv8 through onnxruntime on the CPU at one static, letterboxed input shape: the FP32 graph, or
    the INT8 QDQ model calibrated on real frames and gated against it (``export/int8_detector.py``)."""

    def __init__(self, weights: str, frame_hw: tuple[int, int] | None, imgsz: int | None = None, conf: float = 0.25,
                 iou: float = 0.45, precision: str = "int8", calib=None, cache_dir=None, threads: int | None = None):
        from tdfusion_edge.export import int8_detector as q
        from tdfusion_edge.export.errors import ExportError
        from tdfusion_edge.export.onnx_check import ort_session

        if precision not in DET_PRECISIONS:
            raise TDFusionError(f"--det-precision must be one of {', '.join(DET_PRECISIONS)}, got {precision!r}")
        if frame_hw is None:
            raise TDFusionError("--det-precision int8 needs --size HxW (the detector runs at one static shape)")
        spec = check_detector_spec(weights, deep=False)
        if spec.kind not in ("yaml", "torch"):
            raise TDFusionError(f"--det-precision int8 quantises a PyTorch YOLO (.pt, converted detector or yaml), "
                                f"not {weights}")
        model = _load_reproducibly(spec)
        self.name = f"{Path(weights).name} (onnxruntime {precision})"
        self.shape = q.detector_shape(frame_hw, imgsz)
        self.conf, self.iou = conf, iou
        try:
            if precision == "int8":
                built = q.build_detector_int8_cached(model, self.shape, calib, cache_dir=cache_dir,
                                                     threads=threads).require_passed()
                self.gate_report, path = built.report, built.path
            else:
                self.gate_report, path = None, q.fp32_detector_cached(model, self.shape, cache_dir)
        except ExportError as exc:
            raise TDFusionError(str(exc)) from None
        self.session = ort_session(path, threads)
        names = getattr(model, "names", None) or {}
        self.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
        self._letterbox = q.letterbox

    def detect(self, bgr: np.ndarray) -> Detections:
        """Detect on one BGR uint8 frame: letterbox, run, class-aware NMS, boxes back to frame pixels."""
        import cv2

        x, r, (top, left) = self._letterbox(bgr, self.shape)
        out = self.session.run(["output0"], {"images": x})[0][0]          # (4 + nc) × A
        scores = out[4:]
        cls = scores.argmax(0)
        conf = scores[cls, np.arange(scores.shape[1])]
        keep = conf > self.conf
        if not keep.any():
            return Detections(names=self.names)
        xywh, conf, cls = out[:4, keep].T, conf[keep], cls[keep]
        corner = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, 2:]], 1)   # x, y, w, h for OpenCV
        idx = np.asarray(cv2.dnn.NMSBoxesBatched(corner.tolist(), conf.tolist(), cls.tolist(), self.conf,
                                                 self.iou), np.int64).reshape(-1)
        boxes = np.concatenate([corner[idx, :2], corner[idx, :2] + corner[idx, 2:]], 1)
        boxes = (boxes - np.array([left, top, left, top], np.float32)) / r
        h, w = bgr.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        return Detections(boxes, conf[idx].astype(np.float32), cls[idx].astype(np.int64), self.names)

    def close(self) -> None:
        self.session = None


DET_PRECISIONS = ("fp32", "int8")


def _load_reproducibly(spec):
    """The detector model; an untrained yaml is built from a fixed seed, so that its hash (and the cached
    INT8 model) is the same in every run."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return load_detector_model(spec)


def create_detector(spec: str | None, imgsz=None, conf: float = 0.25, iou: float = 0.45, device: str = "auto",
                    half: bool = False, precision: str = "fp32", frame_hw: tuple[int, int] | None = None,
                    calib=None, cache_dir=None):
    """'none' (or empty) → NoDetector; anything else is a detector file or yaml (checked first).
    ``precision`` "int8": the gated INT8 ONNX on onnxruntime at the frame size ``frame_hw``."""
    if not spec or spec.lower() == "none":
        return NoDetector()
    if precision == "int8":
        return OnnxYoloDetector(spec, frame_hw, imgsz=imgsz, conf=conf, iou=iou, precision="int8", calib=calib,
                                cache_dir=cache_dir)
    return YoloDetector(spec, imgsz=imgsz, conf=conf, iou=iou, device=device, half=half)
