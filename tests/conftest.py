"""Shared fixtures: paths to the optional shared data, small synthetic image folders."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ROADSCENE = SHARED / "data" / "roadscene"
RELEASED_WEIGHTS = SHARED / "weights" / "ReFusion_IVIF.pth"

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Without CUDA the Triton kernels can only run through Triton's CPU interpreter; the variable must be
# set before triton is first imported, so it is set here once for the whole session.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def roadscene() -> Path:
    """The shared RoadScene pairs folder; skips the test when it is absent."""
    if not (ROADSCENE / "ir").is_dir():
        pytest.skip("../shared/data/roadscene not present")
    return ROADSCENE


@pytest.fixture
def released_weights() -> Path:
    """The released ReFusion checkpoint; skips the test when it is absent."""
    if not RELEASED_WEIGHTS.is_file():
        pytest.skip("../shared/weights/ReFusion_IVIF.pth not present")
    return RELEASED_WEIGHTS


def cli_env() -> dict:
    """Environment for CLI subprocesses: unbuffered, CPU-only, quiet progress bars allowed."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TDFUSION_EDGE_CACHE", str(REPO / ".pytest_cache" / "tdfusion-cache"))
    return env


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on two shared cores a second thread mostly waits for other jobs (10× slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_det(tmp_path_factory) -> Path:
    """6 pairs of 64×64 scenes: a warm person (bright in IR) and a car (dark, visible only); 4 train, 2 val."""
    root = tmp_path_factory.mktemp("tiny_det")
    for sub in ("ir", "vi", "labels"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    stems = [f"{i:04d}" for i in range(6)]
    for i, stem in enumerate(stems):
        ir = rng.integers(20, 60, (64, 64), dtype=np.uint8)
        vis = np.repeat(rng.integers(100, 160, (64, 64, 1), dtype=np.uint8), 3, axis=2)
        px, py = 8 + 4 * i, 10
        cx, cy = 30, 36 + (i % 3)
        ir[py:py + 24, px:px + 10] = 230
        vis[cy:cy + 12, cx:cx + 24] = (40, 40, 200)
        cv2.imwrite(str(root / "ir" / f"{stem}.png"), ir)
        cv2.imwrite(str(root / "vi" / f"{stem}.png"), vis)
        (root / "labels" / f"{stem}.txt").write_text(
            f"0 {(px + 5) / 64:.6f} {(py + 12) / 64:.6f} {10 / 64:.6f} {24 / 64:.6f}\n"
            f"1 {(cx + 12) / 64:.6f} {(cy + 6) / 64:.6f} {24 / 64:.6f} {12 / 64:.6f}\n")
    (root / "train.txt").write_text("\n".join(stems[:4]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[4:]) + "\n")
    (root / "data.yaml").write_text("path: .\nlayout: paired\ntask: det\ntrain: train.txt\nval: val.txt\n"
                                    "names: [person, car]\nkeep_empty: true\n")
    return root
