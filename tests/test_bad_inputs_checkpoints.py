"""Bad fusion checkpoints given to ``fuse --weights``, run as a user runs them.

Each case: exit code 2, one ``error:`` line naming the problem, no traceback, nothing written (and,
for the pickle, no code run). The CLI runs are started together (two at a time) by a module fixture,
so the file stays fast; every case still asserts on its own process.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tdfusion_edge.checkpoints import load_model, save_checkpoint
from tdfusion_edge.errors import CheckpointError
from tdfusion_edge.imaging import write_image
from tdfusion_edge.models import FusionNet, FusionNetConfig

TINY = dict(dim=8, num_blocks=1, heads=2)
MARKER = "PWNED_BY_CHECKPOINT"


class _Payload:
    """A pickle that would create a marker file when unpickled without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_payload(tmp: Path) -> dict:
    torch.manual_seed(0)
    path = save_checkpoint(FusionNet(FusionNetConfig(**TINY)), tmp / "base.pt")
    return torch.load(path, weights_only=True)


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _variant(base: dict, config=None, state=None, **top) -> dict:
    out = {**base, "config": {**base["config"], **(config or {})},
           "state_dict": {**base["state_dict"], **(state or {})}}
    out.update(top)
    return out


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _training_state(tmp: Path, net: FusionNet) -> Path:
    from tdfusion_edge.train.config import TrainConfig
    from tdfusion_edge.train.state import save_state

    cfg = TrainConfig(fusion_net=dict(net.config.to_dict())).to_dict()
    return save_state({"config": cfg, "position": {"epoch": 1, "phase": "fusion", "step": 0, "global_step": 7},
                       "models": {"fusion": net.state_dict(), "task": {}, "loss_gen": None}}, tmp / "last.pt")


def _build_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """case name → (weights file, text the one-line error must contain)."""
    base = _tiny_payload(tmp)
    temp_key = "encoder1.0.attn.temperature"
    weight_key = "project_in_1.weight"
    nan = torch.full_like(base["state_dict"][weight_key], float("nan"))
    released_nan = {**base["state_dict"], weight_key: nan, "project_in_1.conv.weight": nan.clone()}
    inf_state = {weight_key: base["state_dict"][weight_key].clone()}
    inf_state[weight_key][0, 0, 0, 0] = float("inf")
    rng = random.Random(7)
    junk = bytes([0x42]) + bytes(rng.randrange(256) for _ in range(4095))
    (tmp / "random.pt").write_bytes(junk)
    cases = {
        "num_blocks_100000": (_variant(base, config={"num_blocks": 100000}), "num_blocks 100000 is out of range"),
        "dim_262144": (_variant(base, config={"dim": 262144}), "dim 262144 is out of range"),
        "heads_0": (_variant(base, config={"heads": 0}), "heads 0 is out of range"),
        "temperature_0d": (_variant(base, state={temp_key: torch.tensor(1.0)}), "expected (heads, 1, 1)"),
        "non_tensor_entry": (_variant(base, state={weight_key: 5}), "is a int, not a tensor"),
        "bad_version": (_variant(base, version="v1.x"), "unreadable format version"),
        "nan_weights": (_variant(base, state={weight_key: nan}), f"entry '{weight_key}' holds non-finite"),
        "inf_weights": (_variant(base, state=inf_state), f"entry '{weight_key}' holds non-finite"),
        "nan_released_layout": (released_nan, "non-finite"),
        "pickle_payload": ({"state_dict": _Payload(str(tmp / MARKER))}, "a safe (weights-only) load refuses"),
    }
    out = {name: (_save(obj, tmp / f"{name}.pt"), text) for name, (obj, text) in cases.items()}
    out["random_bytes"] = (tmp / "random.pt", "is unrecognised bytes (not a PyTorch file)")
    out["onnx_as_weights"] = (_tiny_onnx(tmp / "model.onnx"), "is an ONNX model, not a PyTorch checkpoint")
    return out


def _images(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi"):
        for stem in ("a", "b"):
            write_image(tmp / sub / f"{stem}.png", rng.integers(0, 256, (16, 20), dtype=np.uint8))
    return tmp / "ir", tmp / "vi"


def _fuse(weights: Path, ir: Path, vis: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tdfusion_edge.cli", "fuse", "--ir", str(ir), "--vis", str(vis),
           "--out", str(out), "--weights", str(weights), "--device", "cpu", "--backend", "torch"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=out.parent)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_ckpt")
    ir, vis = _images(tmp)
    cases = _build_cases(tmp)
    torch.manual_seed(1)
    net = FusionNet(FusionNetConfig(**TINY))
    cases["training_state"] = (_training_state(tmp / "run", net), "")
    outs = {name: tmp / f"out_{name}" for name in cases}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: the CI box has two cores
        futures = {name: pool.submit(_fuse, path, ir, vis, outs[name]) for name, (path, _) in cases.items()}
        results = {name: f.result() for name, f in futures.items()}
    return {"tmp": tmp, "cases": cases, "outs": outs, "results": results}


BAD_CASES = ["num_blocks_100000", "dim_262144", "heads_0", "temperature_0d", "non_tensor_entry", "bad_version",
             "nan_weights", "inf_weights", "nan_released_layout", "pickle_payload", "random_bytes", "onnx_as_weights"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_is_one_line_error(runs, case):
    result = runs["results"][case]
    weights, expected = runs["cases"][case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0] and str(weights) in errors[0], errors[0]
    assert "weights_only=False" not in result.stderr and "twins" not in errors[0] and "differ" not in errors[0]
    out = runs["outs"][case]
    assert not out.exists() or not any(out.iterdir()), "nothing may be written on a bad checkpoint"


def test_pickle_payload_never_runs(runs):
    assert runs["results"]["pickle_payload"].returncode == 2
    assert not (runs["tmp"] / MARKER).exists() and not (runs["outs"]["pickle_payload"].parent / MARKER).exists()


def test_training_state_is_accepted_as_weights(runs):
    result = runs["results"]["training_state"]
    assert result.returncode == 0, result.stderr
    assert "is a training state: taking F (the fusion network) from it (epoch 1, step 7)" in result.stderr
    out = runs["outs"]["training_state"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]


def test_training_state_gives_the_same_network(tmp_path):
    torch.manual_seed(3)
    net = FusionNet(FusionNetConfig(**TINY)).eval()
    loaded, info = load_model(_training_state(tmp_path, net))
    assert info["format"] == "train-state" and loaded.config == net.config
    x = torch.rand(1, 1, 12, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, x), net(x, x))


def test_huge_num_blocks_fails_fast(tmp_path):
    base = _tiny_payload(tmp_path)
    for config in ({"num_blocks": 100000}, {"dim": 262144}, {"num_blocks": 16}, {"dim": 256, "heads": 8}):
        path = _save(_variant(base, config=config), tmp_path / "big.pt")
        start = time.perf_counter()
        with pytest.raises(CheckpointError):
            load_model(path)
        assert time.perf_counter() - start < 5.0, config


@pytest.mark.parametrize("config, state, expected", [
    ({"heads": 3}, None, "heads 3 does not divide dim 8"),
    ({"num_blocks": 2}, None, "num_blocks 2 but the weights hold 1"),
    ({"dim": 16, "heads": 2}, None, "dim 16 but the weights are 8 wide"),
    ({"ffn_expansion": float("nan")}, None, "ffn_expansion 'nan' is out of range"),
    ({"bias": "yes"}, None, "expected true or false"),
    ({"width": 3}, None, "unknown model config field(s) width"),
    (None, {"project_in_1.weight": torch.zeros(8, 1, 3, 3, dtype=torch.int64)}, "expected a floating-point tensor"),
    (None, {"encoder1.0.attn.temperature": torch.ones(2, 1, 1, 1)}, "expected (heads, 1, 1)"),
    (None, {"decoder.0.attn.qkv.weight": torch.zeros(3, 3)}, "has shape (3, 3), the config expects"),
    (None, {"extra.weight": torch.zeros(1)}, "unexpected key 'extra.weight'"),
])
def test_more_config_and_entry_checks(tmp_path, config, state, expected):
    path = _save(_variant(_tiny_payload(tmp_path), config=config, state=state), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert expected in str(err.value) and str(path) in str(err.value)
