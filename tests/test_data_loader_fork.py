"""DataLoader workers start safely after the parent used OpenCV's thread pool (no deadlock at fork)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import cv2
import pytest

from tdfusion_edge.data.loader import opencv_single_threaded

# The parent's pool has idle (blocked) threads when the workers fork: a worker that then re-configured
# OpenCV's threads deadlocked in pthread_cond_destroy every time (10 of 10 tries before the fix).
SCRIPT = """
import time
import cv2
import numpy as np
from tdfusion_edge.data.loader import make_loader
from tdfusion_edge.data.synthetic_pairs import SyntheticPairs

cv2.setNumThreads(2)
image = np.random.rand(2000, 2000).astype(np.float32)
for round in range(3):
    for _ in range(2):
        cv2.GaussianBlur(image, (0, 0), 3)
    time.sleep(0.1)  # the pool's threads go from spinning to blocking on their condition variable
    loader = make_loader(SyntheticPairs(length=4, height=32, width=48, crop_size=16), batch_size=2, num_workers=2)
    assert sum(len(b["name"]) for b in loader) == 4
    del loader
print("ok", cv2.getNumThreads())
"""


@pytest.mark.timeout(300)
def test_workers_start_after_parent_used_opencv_threads():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers too
        proc.communicate()
        pytest.fail("DataLoader workers deadlocked after the parent used OpenCV's thread pool")
    assert proc.returncode == 0, err[-2000:]
    assert out.split() == ["ok", "2"]  # and the parent's own OpenCV threads are back as they were


def test_opencv_single_threaded_restores_the_count():
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with opencv_single_threaded():
            assert cv2.getNumThreads() == 1
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
