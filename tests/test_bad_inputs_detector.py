"""Detector files that must never run code, and the safe own detector format.

Malicious ``.pt`` files (a ``__reduce__`` payload, or allowed classes carrying an ``eval``-able
activation in their yaml) and a malicious model yaml, given to live / export / demo / train and to a
resumed run, each run as a user runs it: exit 2, one ``error:`` line, no traceback, nothing written,
and the marker file the payload would create absent. ``yolov8n.pt`` missing offline is refused up
front. The CLI runs start two at a time from a module fixture; each case asserts on its own process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")

from tdfusion_edge.validation.detector import (DETECTOR_FORMAT, DetectorError, YOLO_ALLOWED_GLOBALS,  # noqa: E402
                                               build_from_yaml, check_detector_spec, check_model_yaml,
                                               load_detector_model, read_model_yaml, save_detector)

MARKER = "PWNED_BY_DETECTOR"


class _Payload:
    """Unpickled without weights_only, this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _yolo(seed: int = 0):
    torch.manual_seed(seed)
    return build_from_yaml(read_model_yaml("yolov8n.yaml"), "yolov8n.yaml")


def _ultralytics_pt(path: Path, model) -> Path:
    """A checkpoint laid out as ultralytics' trainer writes one: model and EMA in half precision, train
    args, numpy metrics, a path and a namespace (the data globals of the allow-list)."""
    import copy
    import pathlib

    from ultralytics.utils import IterableSimpleNamespace

    torch.save({"model": copy.deepcopy(model).half(), "ema": copy.deepcopy(model).half(), "updates": 3,
                "optimizer": None, "epoch": -1, "best_fitness": np.float64(0.25), "date": "2025-01-01",
                "version": "8.4", "train_args": {"imgsz": 640, "epochs": 1, "save_dir": pathlib.PosixPath("runs/x")},
                "train_metrics": {"metrics/mAP50(B)": np.float64(0.5), "dtype": np.dtype("float32")},
                "hyp": IterableSimpleNamespace(box=7.5)}, path)
    return path


def _fixtures(tmp: Path) -> dict[str, Path]:
    marker = tmp / MARKER
    evil_pt = tmp / "evil.pt"
    torch.save({"model": _Payload(marker), "date": "x"}, evil_pt)
    # only allow-listed classes, but the yaml inside asks ultralytics to eval() a payload
    model = _yolo()
    model.yaml = {**model.yaml, "activation": f"__import__('os').system('touch {marker}')"}
    evil_yaml_pt = _ultralytics_pt(tmp / "evil_yaml.pt", model)
    evil_yaml = tmp / "evil.yaml"
    evil_yaml.write_text("nc: 3\nactivation: __import__('os').system('touch %s')\n"
                         "backbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [[0], 1, Detect, [nc]]\n" % marker)
    from tdfusion_edge.train.config import TrainConfig
    from tdfusion_edge.train.state import save_state

    resumed = save_state({"config": TrainConfig(task="det", task_weights=str(evil_pt)).to_dict(),
                          "position": {"epoch": 0, "phase": "meta", "step": 0, "global_step": 0}},
                         tmp / "old_run" / "last.pt")
    return {"evil_pt": evil_pt, "evil_yaml_pt": evil_yaml_pt, "evil_yaml": evil_yaml, "resumed": resumed}


def _cases(tmp: Path, f: dict[str, Path]) -> dict[str, tuple[list[str], Path, str]]:
    """case → (CLI arguments, output that must not appear, text of the one-line error)."""
    refused = "is refused: it needs the Python global 'posix.system'"
    offline = "yolov8n.pt not found on disk; it cannot be downloaded here"
    live = ["live", "--ir", "synthetic", "--vis", "synthetic", "--max-frames", "2", "--no-realtime"]
    train = ["train", "--task", "det", "--epochs", "1", "--meta-steps", "1", "--no-progress"]
    return {
        "live_pt": ([*live, "--det", str(f["evil_pt"]), "--out", str(tmp / "live1")], tmp / "live1", refused),
        "live_yaml": ([*live, "--det", str(f["evil_yaml"]), "--out", str(tmp / "live2")], tmp / "live2",
                      "activation \"__import__('os')"),
        "export_pt": (["export", "--det", str(f["evil_pt"]), "--imgsz", "64", "64", "--out", str(tmp / "e.onnx")],
                      tmp / "e.onnx", refused),
        "demo_pt": (["demo", "--det", str(f["evil_pt"]), "--out", str(tmp / "demo1"), "--pairs", "1"],
                    tmp / "demo1", refused),
        "train_pt": ([*train, "--set", f"task_weights={f['evil_pt']}", "--out", str(tmp / "train1")],
                     tmp / "train1", refused),
        "train_yaml_in_pt": ([*train, "--set", f"task_weights={f['evil_yaml_pt']}", "--out", str(tmp / "train2")],
                             tmp / "train2", "model-yaml activation"),
        "train_resume": (["train", "--resume", str(f["resumed"]), "--out", str(tmp / "train3"), "--no-progress"],
                         tmp / "train3", refused),
        "demo_offline": (["demo", "--det", "yolov8n.pt", "--out", str(tmp / "demo2"), "--pairs", "1"],
                         tmp / "demo2", offline),
        "export_offline": (["export", "--det", "yolov8n.pt", "--imgsz", "64", "64", "--out", str(tmp / "o.onnx")],
                           tmp / "o.onnx", offline),
    }


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_det")
    work = tmp / "cwd"  # an empty working folder: no yolov8n.pt lying around
    work.mkdir()
    fixtures = _fixtures(tmp)
    cases = _cases(tmp, fixtures)
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: the CI box has two cores
        futures = {name: pool.submit(_cli, args, work) for name, (args, _, _) in cases.items()}
        results = {name: fut.result() for name, fut in futures.items()}
    return {"tmp": tmp, "work": work, "cases": cases, "results": results}


CASES = ["live_pt", "live_yaml", "export_pt", "demo_pt", "train_pt", "train_yaml_in_pt", "train_resume",
         "demo_offline", "export_offline"]


@pytest.mark.parametrize("case", CASES)
def test_bad_detector_is_refused_up_front(runs, case):
    result = runs["results"][case]
    _, output, expected = runs["cases"][case]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not output.exists(), f"{output} was written"
    assert not (runs["tmp"] / MARKER).exists(), "the payload ran"
    assert not any(runs["work"].iterdir()), "nothing may be written to the working folder"


def test_offline_message_says_what_to_pass(runs):
    line = runs["results"]["demo_offline"].stderr.strip().splitlines()[-1]
    assert "yolov8n.yaml" in line and "convert-det" in line and ".onnx" in line


def test_allow_list_is_explicit_and_refuses_the_rest(tmp_path):
    assert "builtins.eval" not in YOLO_ALLOWED_GLOBALS and "posix.system" not in YOLO_ALLOWED_GLOBALS
    path = tmp_path / "exec.pt"
    torch.save({"model": torch.nn.Linear(2, 2), "hook": torch.nn.functional.relu}, path)
    with pytest.raises(DetectorError, match="'torch.nn.functional.relu'|'torch.nn.modules.linear.Linear'"):
        check_detector_spec(str(path))


@pytest.mark.parametrize("patch, expected", [
    ({"backbone": [[-1, 1, "check_requirements", ["evil"]]]}, "is not an allowed YOLOv8 layer"),
    ({"activation": "nn.SiLU(); import os"}, "activation"),
    ({"head": [[[-1], 1, "Detect", ["__import__('os')"]]]}, "arguments must be"),
    ({"nc": 10 ** 9}, "is not a class count"),
    ({"text_model": "x"}, "unknown model-yaml key"),
])
def test_model_yaml_checks(patch, expected):
    cfg = {**read_model_yaml("yolov8n.yaml"), **patch}
    with pytest.raises(DetectorError, match=expected.replace("(", r"\(")):
        check_model_yaml(cfg, "x.yaml")


def test_harmless_activation_is_accepted():
    cfg = {**read_model_yaml("yolov8n.yaml"), "activation": "nn.LeakyReLU(0.1)"}
    assert check_model_yaml(cfg, "x.yaml")["activation"] == "nn.LeakyReLU(0.1)"


def _predict(model, x):
    with torch.no_grad():
        y = model.eval()(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def test_own_format_round_trip(tmp_path):
    """A YOLO built from yolov8n.yaml saved in the own format, reloaded: same network, same predictions."""
    model = _yolo(seed=5)
    path = save_detector(model, tmp_path / "det.tdet.pt")
    raw = torch.load(path, weights_only=True)  # plain types only: no allow-list needed at all
    assert raw["format"] == DETECTOR_FORMAT and torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = load_detector_model(str(path))
    x = torch.rand(1, 3, 64, 96)
    assert torch.equal(_predict(model, x), _predict(loaded, x))
    assert loaded.names == model.names


def test_convert_det_cli_and_live_detector_agree(tmp_path):
    from tdfusion_edge.apps.detection import create_detector

    model = _yolo(seed=6)
    pt = _ultralytics_pt(tmp_path / "trained.pt", model)
    result = _cli(["convert-det", str(pt), "--out", str(tmp_path / "trained.tdet.pt")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "trained.tdet.pt").is_file()
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(_predict(load_detector_model(str(pt)), x),
                       _predict(load_detector_model(str(tmp_path / "trained.tdet.pt")), x))
    frame = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    dets = [create_detector(str(p), conf=0.0).detect(frame) for p in (pt, tmp_path / "trained.tdet.pt")]
    assert np.array_equal(dets[0].boxes, dets[1].boxes) and np.array_equal(dets[0].classes, dets[1].classes)


def test_task_weights_from_own_format_transfer(tmp_path):
    from tdfusion_edge.tasks import build_task

    model = _yolo(seed=7)
    path = save_detector(model, tmp_path / "t.tdet.pt")
    task = build_task("det", 3, str(path))
    src = dict(model.named_parameters())
    key = "model.0.conv.weight"
    assert torch.equal(dict(task.model.named_parameters())[key], src[key])


def test_convert_det_precisions_keep_provenance_and_values(tmp_path):
    model = _yolo(seed=8)
    pt = _ultralytics_pt(tmp_path / "trained.pt", model)
    src = load_detector_model(str(pt)).state_dict()
    files = {p: tmp_path / f"{p}.tdet.pt" for p in ("fp32", "fp16", "int8")}
    for precision, path in files.items():
        result = _cli(["convert-det", str(pt), "--out", str(path), "--precision", precision,
                       "--note", "trained_on=msrs_det train", "--note", "epochs=20"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        assert torch.load(path, weights_only=True)["provenance"] == {"trained_on": "msrs_det train", "epochs": "20"}
    size = {p: f.stat().st_size for p, f in files.items()}
    assert size["fp16"] < 0.6 * size["fp32"] and size["int8"] < 0.35 * size["fp32"]
    half = load_detector_model(str(files["fp16"])).state_dict()  # back in fp32: the fp16 rounding of each value
    for k, v in half.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.equal(v, src[k].half().float()), k
    raw = torch.load(files["int8"], weights_only=True)
    assert raw["version"] == 2 and raw["int8_scales"]
    q = load_detector_model(str(files["int8"])).state_dict()
    for k in raw["int8_scales"]:  # each weight within half a quantisation step of its channel's scale
        step = raw["int8_scales"][k].view(-1, *([1] * (src[k].dim() - 1)))
        assert raw["state_dict"][k].dtype == torch.int8
        assert bool(((q[k] - src[k].float()).abs() <= 0.5 * step + 1e-7).all()), k
    x = torch.rand(1, 3, 64, 64)
    ref, got = _predict(load_detector_model(str(files["fp32"])), x), _predict(load_detector_model(str(files["int8"])), x)
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())
    bad = _cli(["convert-det", str(pt), "--out", str(tmp_path / "x.tdet.pt"), "--note", "novalue"], tmp_path)
    assert bad.returncode != 0 and "--note 'novalue' is not KEY=VALUE" in bad.stderr


@pytest.mark.parametrize("corrupt, message", [
    (lambda raw: raw["int8_scales"].popitem(), "is stored as int8 without a scale"),
    (lambda raw: raw["int8_scales"].update({"model.99.w": torch.ones(3)}), "int8 scale for unknown key"),
    (lambda raw: raw["int8_scales"].update({k: v[:-1] for k, v in list(raw["int8_scales"].items())[:1]}),
     "finite floats"),
    (lambda raw: raw.update({"int8_scales": [1, 2]}), "not a mapping"),
])
def test_corrupt_int8_scales_are_one_line_errors(tmp_path, corrupt, message):
    path = save_detector(_yolo(seed=9), tmp_path / "q.tdet.pt", precision="int8")
    raw = torch.load(path, weights_only=True)
    corrupt(raw)
    torch.save(raw, path)
    with pytest.raises(DetectorError, match=message):
        load_detector_model(str(path))


def test_builtin_detector_names_resolve_inside_the_package(tmp_path, monkeypatch):
    from tdfusion_edge.checkpoints import BUILTIN_DETECTORS, resolve_detector_name

    path = Path(resolve_detector_name("msrs"))
    assert path.parent.name == "weights" and path.name == BUILTIN_DETECTORS["msrs"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "msrs").write_text("a file of that name here wins")
    assert resolve_detector_name("msrs") == "msrs"
    assert resolve_detector_name("yolov8n.yaml") == "yolov8n.yaml"
