"""Training-state checkpoints: models, optimizers, schedulers, RNG streams and data position.

Written atomically (temp file + rename) and read back with ``weights_only=True``: every RNG state is
stored as tensors and plain numbers, never as pickled objects.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdfusion_edge.checkpoints import atomic_torch_save, read_torch_file
from tdfusion_edge.errors import CheckpointError
from tdfusion_edge.validation.checkpoint import parse_version

STATE_FORMAT = "tdfusion-edge-train-state"
STATE_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), NumPy and Python RNG states, as tensors and numbers."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what ``capture_rng`` recorded (CUDA states only where this machine has the devices)."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def save_state(payload: dict[str, Any], path: str | Path) -> Path:
    """Write a training state atomically; the previous file stays intact until the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, **payload}, path)
    return path


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files a killed atomic write left in a run folder (and its weight_maps/).

    Call before the run writes anything: no write of this run can then be in flight. Returns what was removed.
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "weight_maps"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            # both atomic writers name their temporaries <name>.<random>.tmp (optionally with a leading dot)
            if entry.suffix == ".tmp" and entry.name.count(".") >= 2 and entry.is_file() and not entry.is_symlink():
                try:
                    entry.unlink()
                except OSError:  # not ours to remove after all (permissions): leave it
                    continue
                removed.append(entry)
    return removed


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state (``weights_only=True``) and check it is one."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this project "
                              f"(to start from model weights, use --set init_fusion=... instead)")
    if parse_version(obj.get("version"), path) > STATE_VERSION:
        raise CheckpointError(f"{path} is training-state version {obj.get('version')}; "
                              f"this build reads up to {STATE_VERSION}")
    return obj
