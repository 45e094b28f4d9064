"""Bad training inputs, run as a user runs them: ``tdfusion-edge train`` with a wrong value gives one line
``error: ...`` naming it, exit 2, no traceback, and writes nothing (no run folder). The value checks of
the dataset YAML are also tried key by key in-process (they are what the command calls)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from tdfusion_edge.data.spec import spec_from_dict
from tdfusion_edge.train.config import ConfigError, build_config
from tdfusion_edge.train.state import STATE_FORMAT, STATE_VERSION
from tdfusion_edge.validation.dataset_yaml import DatasetConfigError, check_dataset_values


def _train(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", "train", "--no-progress", "--out", str(out),
                           *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    return proc, out


def _assert_refused(proc: subprocess.CompletedProcess, out: Path, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr[-2000:]
    assert not out.exists(), "a refused run must write nothing"


def _paired_folder(root: Path, with_masks: bool) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("ir", "vis") + (("masks",) if with_masks else ()):
        (root / "train" / kind).mkdir(parents=True)
        for i in range(2):
            image = rng.integers(0, 3 if kind == "masks" else 255, (24, 32), dtype=np.uint8)
            cv2.imwrite(str(root / "train" / kind / f"{i}.png"), image)
    return root


@pytest.mark.parametrize("override, fragment", [
    ("fusion_net=5", "fusion_net must be a mapping such as {dim: 16, num_blocks: 2, heads: 8}, got 5"),
    ("task_size=[0,0]", "task_size sides must be between 8 and 8192 pixels, got [0, 0]"),
    ("fusion_net.dim=100000", "fusion_net.dim must be between 1 and 256, got 100000"),
])
def test_set_values_refused_before_anything_is_built(tmp_path, override, fragment):
    proc, out = _train(tmp_path, "--set", override)
    _assert_refused(proc, out, fragment)


def test_wrong_typed_dataset_yaml_value(tmp_path):
    data = _paired_folder(tmp_path / "pairs", with_masks=True)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"path": str(data), "layout": "paired", "task": "seg",
                                                     "train": "train", "names": ["a", "b", "c"],
                                                     "crop_size": "big"}))
    proc, out = _train(tmp_path, "--data", tmp_path / "d.yaml")
    _assert_refused(proc, out, "d.yaml: crop_size must be a whole number, got 'big'")


def test_paired_folder_without_labels_refused_for_training(tmp_path):
    data = _paired_folder(tmp_path / "pairs", with_masks=False)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"path": str(data), "layout": "paired", "task": "seg",
                                                     "train": "train", "names": ["a", "b", "c"]}))
    proc, out = _train(tmp_path, "--data", tmp_path / "d.yaml")
    _assert_refused(proc, out, "split 'train' has no segmentation masks for task seg")
    assert str(data / "train" / "masks") in proc.stderr
    folder, out = _train(tmp_path, "--data", data)  # the folder itself instead of a YAML
    _assert_refused(folder, out, f"--data {data} is a folder; training reads a dataset YAML")


def test_tampered_config_inside_a_checkpoint_refused_on_resume(tmp_path):
    # a resumed config is untrusted: it is checked like --set values, before anything is built
    ckpt = tmp_path / "old" / "last.pt"
    ckpt.parent.mkdir()
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, "config": {"fusion_net": {"dim": 262144}}}, ckpt)
    proc, out = _train(tmp_path, "--resume", ckpt)
    _assert_refused(proc, out, f"{ckpt} (its config): fusion_net.dim must be between 1 and 256, got 262144")
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("override, fragment", [
    ("seed=1.5", "seed must be a whole number, got 1.5"),
    ("synthetic=5", "synthetic must be a mapping of options, got 5"),
    ("lr=nan", "lr must be a positive finite number, got nan"),
    ("swap=maybe", "swap must be true or false, got 'maybe'"),
    ("data=5", "data must be text"),
    ("fusion_net={dim: 6, heads: 4}", "fusion_net: heads 4 must divide dim 6"),
    ("loss_generator.depth=2", "loss_generator: unknown key(s) depth"),
    ("class_weights=[1, x]", "class_weights must be none, enet or a list of non-negative per-class weights"),
    ("task_size=[240]", "task_size must be [height, width] in whole pixels"),
])
def test_config_values_checked(override, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        build_config(overrides=[override])
    assert fragment in str(err.value)


BASE = {"path": ".", "layout": "paired", "task": "seg", "train": "train", "names": ["a", "b"]}


@pytest.mark.parametrize("change, fragment", [
    ({"crop_size": 1.5}, "crop_size must be a whole number, got 1.5"),
    ({"crop_size": 4}, "crop_size must be between 8 and 8192, got 4"),
    ({"keep_empty": "no"}, "keep_empty must be true or false, got 'no'"),
    ({"names": 5}, "names must be a non-empty list or an {id: name} mapping, got 5"),
    ({"names": {"a": "x"}}, "names as a mapping must be {id: name}"),
    ({"task_size": "big"}, "task_size must be [height, width] in whole pixels, got 'big'"),
    ({"task_size": [0, 10]}, "task_size sides must be between 8 and 8192 pixels"),
    ({"subsample": [1]}, "subsample must be a whole number, got [1]"),
    ({"ignore_index": 300}, "ignore_index must be between 0 and 255, got 300"),
    ({"verify": 3}, "verify must be one of header, full, none, got 3"),
    ({"folders": 5}, "folders must be a mapping {ir, vis, label, label_kind}, got 5"),
    ({"folders": {"ir": 7}}, "folders.ir must be a folder template, got 7"),
    ({"path": 5}, "path must be a folder path, got 5"),
    ({"task": "cls"}, "task must be one of seg, det, got 'cls'"),
    ({"train": 5}, "train must be a split name, a .txt list, a mapping"),
    ({"train": {"split": "train", "fraction": ["a", "b"]}}, "train.fraction must be [start, end]"),
    ({"train": {"split": "train", "seed": "s"}}, "train.seed must be a whole number ≥ 0, got 's'"),
    ({"layout": "synthetic", "train": 0}, "synthetic train must be a sample count between 1 and 1000000, got 0"),
    ({"layout": "synthetic", "train": 4, "image_size": [32.5, 48]}, "image_size must be [height, width] in whole"),
    ({"layout": "synthetic", "train": 4, "condition": "dusk"}, "condition must be one of random, day, night, got"),
])
def test_dataset_yaml_values_checked(change, fragment):
    cfg = {**BASE, **change}
    with pytest.raises(DatasetConfigError) as err:
        check_dataset_values(cfg, "d.yaml")
    assert fragment in str(err.value) and str(err.value).startswith("d.yaml: ")
    with pytest.raises(DatasetConfigError):  # the spec builder runs the same checks first
        spec_from_dict(cfg, source=Path("d.yaml"))


def test_good_dataset_yaml_still_accepted(tmp_path):
    spec = spec_from_dict({**BASE, "crop_size": 64, "task_size": [24, 32], "keep_empty": True,
                           "names": {0: "a", 1: "b"}, "val": {"split": "train", "fraction": [0, 0.5]},
                           "nc": 2}, base_dir=tmp_path)
    assert spec.crop_size == 64 and spec.task_size == (24, 32) and spec.names == ("a", "b")


def test_training_state_with_a_bad_version_is_one_line(tmp_path):
    import torch

    from tdfusion_edge.errors import CheckpointError
    from tdfusion_edge.train.state import STATE_FORMAT, load_state

    path = tmp_path / "last.pt"
    torch.save({"format": STATE_FORMAT, "version": "1; rm -rf"}, path)
    with pytest.raises(CheckpointError, match="unreadable format version"):
        load_state(path)


def test_root_that_is_not_a_folder_is_one_line(tmp_path):
    proc, out = _train(tmp_path, "--data", "msrs_det.yaml", "--root", tmp_path / "nowhere", "--task", "det")
    _assert_refused(proc, out, f"dataset root {tmp_path / 'nowhere'} is not a folder")


def test_data_named_like_a_yaml_literal_stays_a_path(tmp_path):
    # "on" and "2024" are a bool and an int to YAML; given as --data they are file names and say so
    for name in ("on", "2024"):
        proc, out = _train(tmp_path, "--data", name)
        _assert_refused(proc, out, f"dataset config {name} not found")


def test_weight_stats_on_a_wrong_file_is_one_line(tmp_path):
    from tdfusion_edge.checkpoints import resolve_weights

    repo = Path(__file__).resolve().parents[1]
    fusion_net = resolve_weights("default")  # a FusionNet where a LossGenerator is expected
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "weight_stats.py"), "--loss-gen", str(fusion_net),
                           "--data", "msrs_det.yaml", "--root", str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {fusion_net} holds a FusionNet, not a LossGenerator"
    assert not (tmp_path / "out").exists()
