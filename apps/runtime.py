"""Process-level settings for a long-running CPU app: allocator behaviour and thread count."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_tuned = False


def tune_allocator() -> bool:
    """Keep large per-frame buffers in the heap instead of fresh mmaps (glibc only; once per process).

    By default glibc serves every allocation above ~128 KiB-32 MiB with a new mmap and returns it on
    free, so each frame's tensors page-fault anew; on small VMs that alone made PyTorch element-wise
    ops 4–10× slower. Reusing the heap keeps resident memory flat at its working-set size instead.
    """
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return _tuned
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt; nothing to tune there
        return False
    ok = all(mallopt(opt, value) == 1 for opt, value in (
        (_M_MMAP_THRESHOLD, 32 * 2**20),   # glibc's maximum: anything up to 32 MiB comes from the heap
        (_M_TRIM_THRESHOLD, 256 * 2**20),  # do not hand freed memory back to the OS after every frame
        (_M_TOP_PAD, 16 * 2**20),
    ))
    _tuned = ok
    log.debug("glibc allocator tuned for frame-sized buffers: %s", ok)
    return ok


def set_threads(threads: int | None) -> None:
    """Intra-op threads for PyTorch (None leaves its default: one per core)."""
    if threads:
        import torch
        torch.set_num_threads(int(threads))
