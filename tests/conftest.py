"""Shared fixtures: paths to the optional shared data, small synthetic image folders."""
from __future__ import annotations

import os
import sys
from pathlib import Path

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
