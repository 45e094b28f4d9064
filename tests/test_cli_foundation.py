"""The CLI as a user runs it: help, info, fuse (with bad inputs) and the demo, as subprocesses."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import cli_env

from tdfusion_edge.checkpoints import save_checkpoint
from tdfusion_edge.cli import COMMANDS
from tdfusion_edge.models import FusionNet, FusionNetConfig


def tdf(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", *map(str, args)], capture_output=True,
                          text=True, env=cli_env(), cwd=cwd, timeout=timeout)


def test_help_lists_every_command_with_an_example():
    top = tdf("--help")
    assert top.returncode == 0
    for module in COMMANDS:
        name = module.replace("_cmd", "").replace("_", "-")
        assert name in top.stdout
        sub = tdf(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "example:" in sub.stdout and f"tdfusion-edge {name}" in sub.stdout


def test_info_reports_versions_and_backends():
    res = tdf("info")
    assert res.returncode == 0, res.stderr
    for key in ("torch", "triton kernels", "fusion backends usable", "cuda available", "live pre-processing"):
        assert key in res.stdout
    models = next(line for line in res.stdout.splitlines() if line.startswith("built-in models"))
    for name in ("--weights default", "--weights lite", "--weights tdfusion-msrs", "G tdfusion-msrs", "--det msrs"):
        assert name in models
    assert "missing" not in models  # every built-in name has its file in the package


@pytest.fixture
def pair_folders(tmp_path):
    rng = np.random.default_rng(0)
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    ir.mkdir()
    vis.mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(ir / f"{stem}.png"), rng.integers(0, 256, (40, 48), dtype=np.uint8))
        cv2.imwrite(str(vis / f"{stem}.jpg"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    cv2.imwrite(str(ir / "small.png"), rng.integers(0, 256, (20, 24), dtype=np.uint8))
    cv2.imwrite(str(vis / "small.png"), rng.integers(0, 256, (40, 48), dtype=np.uint8))
    (ir / "corrupt.png").write_bytes(b"\x89PNG\r\n broken")
    cv2.imwrite(str(vis / "corrupt.png"), rng.integers(0, 256, (40, 48), dtype=np.uint8))
    cv2.imwrite(str(ir / "lonely.png"), rng.integers(0, 256, (40, 48), dtype=np.uint8))
    torch_weights = save_checkpoint(FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=2)), tmp_path / "w.pt")
    return ir, vis, torch_weights


def test_fuse_reports_and_skips_bad_pairs(pair_folders, tmp_path):
    ir, vis, weights = pair_folders
    out = tmp_path / "out"
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", out, "--weights", weights, "--device", "cpu",
              "--backend", "torch")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert sorted(p.name for p in (out / "color").glob("*.png")) == ["a.png", "b.png"]
    fused = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    assert fused.shape == (40, 48) and fused.min() == 0 and fused.max() == 255  # min-max stretch
    assert "done: 2 pair(s)" in res.stdout and "mean per pair" in res.stdout
    assert "lonely.png: no visible partner" in res.stdout
    assert "small: size mismatch" in res.stdout and "corrupt: cannot decode" in res.stdout
    assert "Traceback" not in res.stderr


def test_fuse_resize_fuses_mismatched_sizes(pair_folders, tmp_path):
    ir, vis, weights = pair_folders
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", tmp_path / "o", "--weights", weights, "--resize",
              "--backend", "torch", "--device", "cpu")
    assert res.returncode == 0 and (tmp_path / "o" / "small.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--ir", "nope", "--vis", "nope"], "--ir folder not found"),
    (["--weights", "missing.pt"], "checkpoint not found"),
])
def test_fuse_user_errors_are_one_line(pair_folders, tmp_path, args, message):
    ir, vis, weights = pair_folders
    base = {"--ir": ir, "--vis": vis, "--weights": weights}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = tmp_path / value
    flat = [x for kv in base.items() for x in kv]
    res = tdf("fuse", *flat, "--out", tmp_path / "o", "--backend", "torch", "--device", "cpu")
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_fuse_rejects_corrupt_checkpoint(pair_folders, tmp_path):
    ir, vis, _ = pair_folders
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", tmp_path / "o", "--weights", bad, "--backend", "torch")
    assert res.returncode == 2 and "not a PyTorch checkpoint" in res.stderr and "Traceback" not in res.stderr


def test_fuse_released_weights_on_roadscene(released_weights, roadscene, tmp_path):
    # A slice of the 50 pairs keeps CI short; the full folder is exercised by hand (see the README).
    ir, vis, out = tmp_path / "ir", tmp_path / "vi", tmp_path / "fused"
    ir.mkdir()
    vis.mkdir()
    for path in sorted((roadscene / "ir").glob("*.jpg"))[:6]:
        (ir / path.name).symlink_to(path)
        (vis / path.name).symlink_to(roadscene / "vi" / path.name)
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", out,
              "--weights", released_weights, "--backend", "torch", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("*.png"))) == 6 and len(list((out / "color").glob("*.png"))) == 6
    ev = tdf("eval", "--ir", ir, "--vis", vis, "--fused", out, "--metrics", "EN,SF,SSIM")
    assert ev.returncode == 0, ev.stderr
    assert "tdfusion" in ev.stdout and "cddfuse" in ev.stdout


def test_demo_runs_end_to_end(tmp_path):
    res = tdf("demo", "--out", tmp_path / "demo", "--pairs", "2", "--size", "96", "128", "--live-frames", "6")
    assert res.returncode == 0, res.stderr
    demo = tmp_path / "demo"
    assert (demo / "montage.png").is_file() and (demo / "metrics.txt").is_file()
    text = (demo / "metrics.txt").read_text()
    assert "EN" in text and "mean" in text
    assert len(list((demo / "fused").glob("*.png"))) == 2
    assert str(demo.resolve()) in res.stdout
    video = cv2.VideoCapture(str(demo / "live" / "live.mp4"))
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames == 6
    assert (demo / "live" / "stats.json").is_file()
