"""YOLO detector files, checked and loaded without ever running code from them.

Accepted ``--det`` / ``task_weights`` values (see docs/detector.md):

* ``none``; a model yaml (``yolov8n.yaml``: an untrained network, built offline);
* an ultralytics ``.pt``: loaded with ``torch.load(weights_only=True)`` and only the globals in
  ``YOLO_ALLOWED_GLOBALS`` (the classes a YOLOv8 detection checkpoint is made of); any other global
  is refused by name before anything is unpickled;
* this project's own detector format (``DETECTOR_FORMAT``): a plain dict of the model yaml, class
  names and the state dict, loadable with no allow-list at all; ``convert_detector`` writes it;
* ``.onnx`` / ``.engine`` (run by ultralytics' AutoBackend, no pickle involved).

The model yaml (of a yaml file, inside a ``.pt`` or in the own format) is checked too, because
ultralytics ``eval``s its ``activation`` and looks layer names up in a module namespace: only the
layers in ``YOLO_LAYERS`` and activations like ``nn.SiLU()`` pass. Nothing is ever downloaded.
"""
from __future__ import annotations

import copy
import importlib
import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from tdfusion_edge.errors import TDFusionError

from .checkpoint import describe_bytes
from .detector_storage import pack, unpack

DETECTOR_FORMAT = "tdfusion-edge-detector"
DETECTOR_VERSION = 2  # 2: int8 weights with per-channel scales (int8_scales)
NONE = "none"
TORCH_SUFFIXES = (".pt", ".pth")
YAML_SUFFIXES = (".yaml", ".yml")
EXPORTED_SUFFIXES = (".onnx", ".engine")
MAX_YAML_BYTES = 64 * 1024

# Every global a YOLOv8 detection checkpoint (ultralytics 8.x, model + ema + train args) pickles.
YOLO_ALLOWED_GLOBALS = (
    "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.block.C2f",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.utils.IterableSimpleNamespace",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.linear.Identity",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "pathlib.PosixPath",
)
# Layer names a model yaml may use (YOLOv8 detection), and the activations it may set.
YOLO_LAYERS = frozenset({"Conv", "C2f", "C3", "Bottleneck", "SPPF", "SPP", "Concat", "Detect", "DWConv",
                         "nn.Upsample"})
_ACTIVATION = re.compile(r"(torch\.)?nn\.(SiLU|ReLU|ReLU6|LeakyReLU|Hardswish|GELU|Mish|Identity)"
                         r"\(\s*(\d+(\.\d+)?)?\s*\)")
_YAML_KEYS = frozenset({"nc", "scales", "scale", "depth_multiple", "width_multiple", "max_channels", "backbone",
                        "head", "yaml_file", "ch", "channels", "activation", "reg_max", "end2end"})


class DetectorError(TDFusionError):
    """A detector file or name that cannot be used safely (unknown kind, missing, refused global, bad yaml)."""


@dataclass(frozen=True)
class DetectorSpec:
    """A checked ``--det`` value: ``kind`` none | yaml | torch | exported, and the file (or yaml name)."""

    kind: str
    path: str


# ------------------------------------------------------------------------------------------ resolving
def check_detector_spec(spec: str | Path | None, deep: bool = True) -> DetectorSpec:
    """Resolve and check a detector value up front (before a command writes anything); one-line errors.

    ``deep``: also load (or build) the model once, so that a bad yaml inside a .pt fails here too.
    """
    text = str(spec).strip() if spec is not None else ""
    if not text or text.lower() == NONE:
        return DetectorSpec(NONE, NONE)
    from tdfusion_edge.checkpoints import resolve_detector_name

    text = resolve_detector_name(text)
    if "://" in text:
        raise DetectorError(f"detector {text!r} is a URL; nothing is downloaded here: pass a local file")
    lower = text.lower()
    if lower.endswith(YAML_SUFFIXES):
        checked = DetectorSpec("yaml", text)
        cfg = check_model_yaml(read_model_yaml(text), text)
        if deep:
            build_from_yaml(cfg, text)
        return checked
    path = Path(text).expanduser()
    if lower.endswith(EXPORTED_SUFFIXES):
        if not path.is_file():
            raise DetectorError(f"detector {text} not found")
        return DetectorSpec("exported", str(path))
    if not lower.endswith(TORCH_SUFFIXES):
        raise DetectorError(f"detector {text!r}: expected none, a model yaml (yolov8n.yaml), a .pt/.pth "
                            f"(ultralytics or this project's detector format), or an .onnx/.engine file")
    if not path.is_file():
        path = _cached_official(text) or path
    if not path.is_file():
        bare = path.parent == Path(".") and not text.startswith((".", "~", "/"))
        why = "; it cannot be downloaded here (nothing is fetched)" if bare else ""
        raise DetectorError(f"detector {text} not found on disk{why}; pass {Path(text).stem}.yaml (untrained, "
                            f"built offline), a detector converted with 'tdfusion-edge convert-det', an .onnx, "
                            f"or a local .pt path")
    scan_torch_globals(path)
    checked = DetectorSpec("torch", str(path))
    if deep:
        load_detector_model(checked)
    return checked


def _cached_official(name: str) -> Path | None:
    """A bare official name (yolov8n.pt) that ultralytics already keeps in its weights folder."""
    if Path(name).name != name:
        return None
    try:
        from ultralytics.utils import SETTINGS
    except ImportError:
        return None
    candidate = Path(SETTINGS.get("weights_dir", "")) / name
    return candidate if candidate.is_file() else None


def read_model_yaml(spec: str) -> dict:
    """The model dict of a yaml file or a name ultralytics ships (``yolov8n.yaml``), without building it."""
    path = Path(spec).expanduser()
    if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
        raise DetectorError(f"model yaml {spec} is {path.stat().st_size} bytes; a model yaml is under "
                            f"{MAX_YAML_BYTES // 1024} kB")
    try:
        from ultralytics.nn.tasks import yaml_model_load
    except ImportError:
        raise DetectorError("detection needs the 'ultralytics' package (pip install ultralytics)") from None
    try:
        cfg = yaml_model_load(str(path) if path.is_file() else spec)
    except (FileNotFoundError, OSError):
        raise DetectorError(f"YOLO model yaml {spec!r} not found (neither a file nor a model ultralytics "
                            f"ships, e.g. yolov8n.yaml)") from None
    except Exception as exc:  # a yaml syntax error has many types
        raise DetectorError(f"YOLO model yaml {spec!r} cannot be parsed ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise DetectorError(f"YOLO model yaml {spec!r} is not a mapping")
    return cfg


# ------------------------------------------------------------------------------------------ model yaml
def _number(value: object, lo: float, hi: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and lo <= value <= hi


def _literal_arg(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) <= 1e6
    if isinstance(value, str):
        return len(value) <= 32 and re.fullmatch(r"[A-Za-z0-9_.\-]*", value) is not None
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return False


def check_model_yaml(cfg: object, source: str) -> dict:
    """A YOLOv8 model dict whose keys, layer names, arguments and activation are all known; else one line."""
    if not isinstance(cfg, Mapping):
        raise DetectorError(f"{source}: the model yaml is not a mapping")
    unknown = sorted(str(k) for k in cfg if k not in _YAML_KEYS)
    if unknown:
        raise DetectorError(f"{source}: unknown model-yaml key(s) {', '.join(unknown)[:80]}")
    if "nc" in cfg and not (isinstance(cfg["nc"], int) and not isinstance(cfg["nc"], bool) and 1 <= cfg["nc"] <= 10000):
        raise DetectorError(f"{source}: model-yaml nc {str(cfg['nc'])[:20]!r} is not a class count (1..10000)")
    for key in ("depth_multiple", "width_multiple"):
        if key in cfg and not _number(cfg[key], 1e-3, 4):
            raise DetectorError(f"{source}: model-yaml {key} {str(cfg[key])[:20]!r} is out of range (0..4]")
    for key, top in (("max_channels", 4096), ("ch", 16), ("channels", 16), ("reg_max", 64)):
        if key in cfg and not (isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and 1 <= cfg[key] <= top):
            raise DetectorError(f"{source}: model-yaml {key} {str(cfg[key])[:20]!r} is out of range (1..{top})")
    scales = cfg.get("scales")
    if scales is not None:
        if not isinstance(scales, Mapping) or len(scales) > 8 or not all(
                isinstance(k, str) and isinstance(v, list) and len(v) == 3 and all(_number(x, 1e-3, 4096) for x in v)
                for k, v in scales.items()):
            raise DetectorError(f"{source}: model-yaml scales must map names to [depth, width, max_channels]")
    scale = cfg.get("scale")
    if scale not in (None, "") and not (isinstance(scale, str) and len(scale) <= 4):
        raise DetectorError(f"{source}: model-yaml scale {str(cfg['scale'])[:20]!r} is not a scale name")
    for key in ("yaml_file",):
        if key in cfg and not (isinstance(cfg[key], str) and len(cfg[key]) <= 512):
            raise DetectorError(f"{source}: model-yaml {key} is not a file name")
    if "end2end" in cfg and not isinstance(cfg["end2end"], bool):
        raise DetectorError(f"{source}: model-yaml end2end must be true or false")
    act = cfg.get("activation")
    if act is not None and not (isinstance(act, str) and _ACTIVATION.fullmatch(act.strip())):
        raise DetectorError(f"{source}: model-yaml activation {str(act)[:40]!r} is refused (allowed: nn.SiLU(), "
                            f"nn.ReLU(), nn.LeakyReLU(0.1), ...)")
    for part in ("backbone", "head"):
        layers = cfg.get(part)
        if not isinstance(layers, list) or not 1 <= len(layers) <= 200:
            raise DetectorError(f"{source}: model-yaml {part} must be a list of layers")
        for i, layer in enumerate(layers):
            where = f"{source}: model-yaml {part} layer {i}"
            if not isinstance(layer, list) or len(layer) != 4:
                raise DetectorError(f"{where} is not [from, repeats, module, args]")
            src, reps, module, args = layer
            if not (isinstance(src, int) or (isinstance(src, list) and 1 <= len(src) <= 8
                                             and all(isinstance(s, int) for s in src))):
                raise DetectorError(f"{where}: 'from' must be a layer index or a list of them")
            if not (isinstance(reps, int) and not isinstance(reps, bool) and 1 <= reps <= 64):
                raise DetectorError(f"{where}: repeats {str(reps)[:20]!r} is out of range (1..64)")
            if module not in YOLO_LAYERS:
                raise DetectorError(f"{where}: module {str(module)[:40]!r} is not an allowed YOLOv8 layer "
                                    f"({', '.join(sorted(YOLO_LAYERS))})")
            if not isinstance(args, list) or len(args) > 16 or not all(_literal_arg(a) for a in args):
                raise DetectorError(f"{where}: arguments must be a short list of numbers and names")
    return dict(cfg)


def _plain_yaml(cfg: Mapping) -> dict:
    """A deep copy in plain Python types (what a weights-only load can read back)."""
    def plain(v):
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


# ------------------------------------------------------------------------------------------ .pt files
def _resolve_global(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _allowed_objects(names: list[str]) -> list:
    objs: list = []
    for name in names:
        try:
            obj = _resolve_global(name)
        except (ImportError, AttributeError):
            continue  # e.g. numpy.core vs numpy._core: only one exists in a given numpy
        objs.append((obj, name) if name.endswith("multiarray.scalar") else obj)
    if "numpy.dtype" in names:
        import numpy as np

        # the concrete dtype classes (numpy.dtypes.Float64DType ...) are built dynamically and never
        # named in a checkpoint's GLOBAL list, but the unpickler meets them
        objs += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return objs


def scan_torch_globals(path: str | Path) -> list[str]:
    """The globals ``path`` would unpickle; any outside ``YOLO_ALLOWED_GLOBALS`` is refused by name."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(64)
    kind = describe_bytes(head, path)
    if kind:
        raise DetectorError(f"detector {path} is {kind}, not a YOLO .pt checkpoint")
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive (legacy pickle, damaged): refuse rather than guess
        raise DetectorError(f"detector {path} is not a torch.save zip archive (damaged, or a legacy format); "
                            f"re-save it with a recent ultralytics, or pass an .onnx or a model yaml") from None
    bad = [n for n in needed if n not in YOLO_ALLOWED_GLOBALS]
    if bad:
        raise DetectorError(f"detector {path} is refused: it needs the Python global {bad[0]!r}, which is not a "
                            f"part of a YOLOv8 checkpoint (it could run code when loaded)")
    return list(needed)


def _load_torch_detector_file(path: Path) -> object:
    needed = scan_torch_globals(path)
    try:
        with torch.serialization.safe_globals(_allowed_objects(needed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"the Python global {found.group(1)!r}" if found else "an object a safe load refuses"
        raise DetectorError(f"detector {path} is refused: it needs {what}") from None
    except Exception as exc:  # damaged archive
        raise DetectorError(f"detector {path} is damaged or truncated ({type(exc).__name__})") from None


def _from_ultralytics_checkpoint(ckpt: Mapping, path: Path) -> torch.nn.Module:
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel

    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, DetectionModel):
        raise DetectorError(f"detector {path} holds no YOLO detection model (found {type(model).__name__})")
    check_model_yaml(getattr(model, "yaml", None), str(path))
    train_args = ckpt.get("train_args")
    model = model.float().eval()
    model.args = {**DEFAULT_CFG_DICT, **(dict(train_args) if isinstance(train_args, Mapping) else {})}
    model.task = "detect"
    model.pt_path = str(path)
    if not isinstance(getattr(model, "stride", None), torch.Tensor):
        model.stride = torch.tensor([32.0])
    return model


def build_from_yaml(cfg: Mapping, source: str, nc: int | None = None) -> torch.nn.Module:
    """An (untrained) DetectionModel from a checked model dict."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel

    cfg = check_model_yaml(copy.deepcopy(dict(cfg)), source)
    if nc is not None:
        cfg["nc"] = nc
    try:
        model = DetectionModel(cfg, ch=3, nc=cfg.get("nc"), verbose=False)
    except Exception as exc:  # layer arguments that do not fit together
        raise DetectorError(f"{source}: the model yaml does not build a network ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    model.args = {**DEFAULT_CFG_DICT, "task": "detect"}
    model.task = "detect"
    return model.eval()


def _from_own_format(obj: Mapping, path: Path) -> torch.nn.Module:
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > DETECTOR_VERSION:
        raise DetectorError(f"detector {path} is format version {str(version)[:20]!r}; this build reads up to "
                            f"{DETECTOR_VERSION}")
    model = build_from_yaml(obj.get("yaml"), str(path))
    state = obj.get("state_dict")
    if not isinstance(state, Mapping):
        raise DetectorError(f"detector {path} has no state_dict")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise DetectorError(f"detector {path}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor")
    try:
        state = unpack(state, obj.get("int8_scales"), f"detector {path}")
    except ValueError as exc:
        raise DetectorError(str(exc)) from None
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise DetectorError(f"detector {path} has unexpected key {str(key)[:80]!r}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise DetectorError(f"detector {path}: key {key!r} has shape {tuple(value.shape)}, "
                                f"the yaml gives {tuple(own[key].shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DetectorError(f"detector {path}: entry {key!r} holds non-finite values (NaN or Inf)")
    missing = next((k for k in own if k not in state), None)
    if missing is not None:
        raise DetectorError(f"detector {path} is missing key {missing!r}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    names = obj.get("names")
    if isinstance(names, Mapping):
        model.names = {int(k): str(v) for k, v in names.items() if isinstance(k, int)}
    model.pt_path = str(path)
    return model.eval()


def load_detector_model(spec: str | Path | DetectorSpec) -> torch.nn.Module:
    """A YOLO DetectionModel (eval, fp32, CPU) from a yaml, an ultralytics .pt or the own format."""
    spec = spec if isinstance(spec, DetectorSpec) else check_detector_spec(spec, deep=False)
    if spec.kind == "yaml":
        return build_from_yaml(read_model_yaml(spec.path), spec.path)
    if spec.kind != "torch":
        raise DetectorError(f"detector {spec.path} is not a PyTorch model (kind {spec.kind})")
    path = Path(spec.path)
    obj = _load_torch_detector_file(path)
    if not isinstance(obj, Mapping):
        raise DetectorError(f"detector {path} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == DETECTOR_FORMAT:
        return _from_own_format(obj, path)
    return _from_ultralytics_checkpoint(obj, path)


# ------------------------------------------------------------------------------------------ own format
def save_detector(model: torch.nn.Module, path: str | Path, source: str = "", precision: str = "fp32",
                  provenance: Mapping | None = None) -> Path:
    """Write ``model`` in the own detector format (yaml + names + state dict), atomically.

    ``precision``: fp32 as trained, fp16 (half the file) or int8 weights with per-channel scales (a
    quarter; see ``detector_storage``); loading always gives fp32. ``provenance``: JSON-ready facts of
    how the model was made, kept in the file.
    """
    from tdfusion_edge.checkpoints import atomic_torch_save

    cfg = check_model_yaml(_plain_yaml(getattr(model, "yaml", None) or {}), source or str(path))
    names = getattr(model, "names", None) or {}
    names = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    stored, scales = pack(model.state_dict(), precision)
    payload = {
        "format": DETECTOR_FORMAT,
        "version": DETECTOR_VERSION if scales else 1,  # version 1 readers know every other precision
        "yaml": cfg,
        "names": {int(k): str(v) for k, v in names.items()},
        "state_dict": stored,
        "source": str(source),
        "provenance": json.loads(json.dumps(dict(provenance or {}))),
    }
    if scales:
        payload["int8_scales"] = scales
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    return path


def convert_detector(src: str | Path, dst: str | Path | None = None, precision: str = "fp32",
                     provenance: Mapping | None = None) -> Path:
    """Convert an allow-listed ultralytics .pt (or a yaml) into the own format; returns the written path."""
    spec = check_detector_spec(src, deep=False)
    if spec.kind not in ("torch", "yaml"):
        raise DetectorError(f"only a .pt or a model yaml can be converted, not {src}")
    model = load_detector_model(spec)
    out = Path(dst) if dst else Path(Path(str(src)).stem + ".tdet.pt")
    if out.resolve() == Path(spec.path).resolve():
        raise DetectorError(f"--out {out} would overwrite the source")
    return save_detector(model, out, source=str(src), precision=precision, provenance=provenance)

