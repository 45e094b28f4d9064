"""Where results are written: folder checks before a run, and atomic file writes during it.

Every writer of the package goes through this module, so that

* an output folder that is, or contains, an input file is refused before anything is written
  (``fuse --out`` equal to ``--ir`` would otherwise overwrite the sources);
* a read-only folder, an output that is a file, a missing permission or a full disk is one line
  naming the path (``OutputPathError``), never a traceback;
* a file appears under its final name only when it is complete: bytes go to a temporary file in
  the same folder, which is renamed into place (``os.replace``); a failed or interrupted write
  removes the temporary file and leaves any previous file of that name untouched.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tdfusion_edge.errors import TDFusionError

# Temporary files are hidden and end in .tmp, so image listings (by suffix) never pick them up.
TMP_SUFFIX = ".tmp"

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "file name too long",
}


class OutputPathError(TDFusionError):
    """An output that cannot or must not be written (overlaps an input, read-only, full, not a folder)."""


def _read_umask() -> int:
    # Read once at import (single-threaded): os.umask can only be read by setting it, which would
    # race with files created by other threads (live sinks) if done per write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK   # what open() would give a new file; mkstemp gives 0600


def os_reason(exc: OSError) -> str:
    """A short human reason for an OSError (``no space left on the device``, ``read-only file system``)."""
    return _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _input_files(path: Path, extensions: Sequence[str] | None) -> Iterable[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        for child in path.iterdir():
            if child.is_file() and (extensions is None or child.suffix.lower() in extensions):
                yield child


def check_no_overlap(out: str | os.PathLike, inputs: Sequence[tuple[str, str | os.PathLike]], what: str = "--out",
                     extensions: Sequence[str] | None = None) -> None:
    """Refuse an output folder that is an input folder or contains an input file.

    ``inputs``: (option name, file or folder) pairs; a folder's files (with ``extensions``, if given)
    are the input files. Symbolic links are resolved, so a link to the source folder is caught too.
    """
    out_r = _resolved(out)
    for flag, given in inputs:
        src = _resolved(given)
        if src.is_dir() and src == out_r:
            raise OutputPathError(f"{what} {out} is the {flag} folder: writing there would overwrite the sources; "
                                  "choose another folder")
        for f in _input_files(src, extensions):
            if _inside(f.resolve(), out_r):
                raise OutputPathError(f"{what} {out} contains the {flag} input {f}: writing there could overwrite "
                                      "sources; choose a folder outside the inputs")


def check_output_file(path: str | os.PathLike, inputs: Sequence[tuple[str, str | os.PathLike]] = (),
                      what: str = "output", extensions: Sequence[str] | None = None) -> Path:
    """Check (without writing) that ``path`` can become a file: not a folder, not an input file (of a
    folder's files, those with ``extensions`` when given), parent usable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputPathError(f"{what} {p} is a folder; give a file name")
    p_r = _resolved(p)
    for flag, given in inputs:
        src = _resolved(given)
        if any(f.resolve() == p_r for f in _input_files(src, extensions)):
            raise OutputPathError(f"{what} {p} is a {flag} input file; writing it would overwrite the source")
    _check_parent_chain(p.parent, what, p)
    return p


def _check_parent_chain(folder: Path, what: str, target: Path) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder (else: a file is in the way)."""
    for anc in (folder, *folder.parents):
        if anc.exists():
            if not anc.is_dir():
                raise OutputPathError(f"cannot write {what} {target}: {anc} is a file, not a folder")
            return


def ensure_output_dir(path: str | os.PathLike, what: str = "--out",
                      inputs: Sequence[tuple[str, str | os.PathLike]] = (),
                      extensions: Sequence[str] | None = None, create: bool = True) -> Path:
    """Create ``path`` if needed and prove it writable (a probe file), after the overlap check.

    ``create=False`` only checks, writing nothing (for a check before a slow start-up; call again
    with ``create=True`` before the first write). Every problem is one ``OutputPathError`` line.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what} {p} is a file, not a folder")
    if inputs:
        check_no_overlap(p, inputs, what, extensions)
    _check_parent_chain(p, what, p)
    if not create:
        existing = next(a for a in (p, *p.parents) if a.exists())
        if not os.access(existing, os.W_OK | os.X_OK):  # read-only mounts fail this even for root
            raise OutputPathError(f"cannot write into {what} folder {p}: {existing} is not writable")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {what} folder {p}: {os_reason(exc)}") from None
    # A probe catches read-only mounts and missing permissions now instead of at the first image.
    # (As root, chmod does not stop writes, so a read-only mode alone is not an error then.)
    try:
        fd, probe = tempfile.mkstemp(prefix=".tdfusion-probe.", suffix=TMP_SUFFIX, dir=p)
    except OSError as exc:
        raise OutputPathError(f"cannot write into {what} folder {p}: {os_reason(exc)}") from None
    os.close(fd)
    os.unlink(probe)
    return p


def _make_parent(path: Path) -> None:
    _check_parent_chain(path.parent, "file", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create folder {path.parent} for {path}: {os_reason(exc)}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    ``durable`` also fsyncs before the rename (survives power loss, costs a disk flush).
    On any failure the temporary file is removed, ``path`` keeps its previous content (or stays
    absent) and an OSError becomes one OutputPathError line naming ``path``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a folder")
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {os_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)   # results are ordinary files, not mkstemp's private 0600
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {os_reason(exc)}") from None
    finally:  # also on KeyboardInterrupt: never leave a partial temporary file behind
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", durable: bool = False) -> Path:
    """``atomic_write_bytes`` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding), durable=durable)


def encode_image(img: np.ndarray, suffix: str, params: Sequence[int] | None = None) -> bytes:
    """The bytes of ``img`` in the format named by ``suffix`` (``.png``, ``.jpg``, ...), or one line."""
    import cv2

    suffix = suffix if suffix.startswith(".") else "." + suffix
    try:
        ok, buf = cv2.imencode(suffix, img, list(params or []))
    except cv2.error:
        ok, buf = False, None
    if not ok:
        raise OutputPathError(f"cannot encode a {img.dtype} image of shape {img.shape} as {suffix} "
                              "(unknown format or unsupported pixel type)")
    return buf.tobytes()


def write_image_atomic(path: str | os.PathLike, img: np.ndarray, params: Sequence[int] | None = None) -> Path:
    """Encode ``img`` by the suffix of ``path`` (PNG when none) and write it atomically."""
    path = Path(path)
    return atomic_write_bytes(path, encode_image(img, path.suffix or ".png", params))
