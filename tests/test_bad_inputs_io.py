"""Bad outputs and silently misread inputs.

Each CLI case runs as a user runs it (``python -m tdfusion_edge.cli``) on tiny generated images and
checks the exit code, the one-line message, that no traceback is printed, that nothing was written
where it must not be and that no source changed. Faults that cannot be caused from outside a
process (a full disk, a write interrupted half-way, onnxruntime unable to run) are injected in-process
at the lowest level (the file object's ``write``, the session constructor) and the real writer or
backend is checked.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import cli_env

from tdfusion_edge.checkpoints import save_checkpoint
from tdfusion_edge.models import FusionNet, FusionNetConfig
from tdfusion_edge.validation import output_path
from tdfusion_edge.validation.image import (ImageTooLarge, decode_image, index_images, max_pixels,
                                            normalize_high_depth)
from tdfusion_edge.validation.output_path import (OutputPathError, atomic_write_bytes, atomic_write_text,
                                                  ensure_output_dir, write_image_atomic)

H, W = 24, 32


def tdf(*args, env=None, timeout=300):
    full_env = {**cli_env(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def one_line_error(res, rc: int = 2) -> str:
    """The run failed with ``rc`` and said why in exactly one ``error:`` line, without a traceback."""
    assert res.returncode == rc, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` with a hash of its bytes (to prove nothing changed or appeared)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny network: the CLI cases test input/output handling, not fusion quality."""
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    return save_checkpoint(FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=2)), path)


@pytest.fixture
def pairs(tmp_path) -> tuple[Path, Path]:
    """Two good pairs: ir/{a,b}.png (gray), vis/{a,b}.png (colour)."""
    rng = np.random.default_rng(0)
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    ir.mkdir()
    vis.mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(ir / f"{stem}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
        cv2.imwrite(str(vis / f"{stem}.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    return ir, vis


# ------------------------------------------------------------------ output folders (fuse --out)

@pytest.mark.parametrize("where", ["ir", "vis", "parent"])
def test_fuse_refuses_an_out_folder_that_holds_sources(pairs, tmp_path, weights, where):
    ir, vis = pairs
    out = {"ir": ir, "vis": vis, "parent": tmp_path}[where]
    before = snapshot(tmp_path)
    line = one_line_error(tdf("fuse", "--ir", ir, "--vis", vis, "--out", out, "--weights", weights,
                              "--backend", "torch", "--device", "cpu"))
    assert "--out" in line and ("overwrite" in line or "contains" in line)
    assert snapshot(tmp_path) == before  # no source overwritten, nothing added


def test_fuse_refuses_an_out_that_is_a_file_or_lies_under_one(pairs, tmp_path, weights):
    ir, vis = pairs
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me\n")
    before = snapshot(tmp_path)
    line = one_line_error(tdf("fuse", "--ir", ir, "--vis", vis, "--out", blocker, "--weights", weights))
    assert str(blocker) in line and "is a file" in line
    # A folder below a file cannot be created by anyone, root included (chmod does not stop root).
    line = one_line_error(tdf("fuse", "--ir", ir, "--vis", vis, "--out", blocker / "fused", "--weights", weights))
    assert str(blocker) in line and "not a folder" in line
    assert snapshot(tmp_path) == before


def _unwritable_folder(tmp_path):
    """A folder nobody may write into: chmod 555 for a normal user; sysfs for root, whom chmod does not stop."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        sysfs = Path("/sys/kernel")
        if not sysfs.is_dir() or os.access(sysfs, os.W_OK) and _can_create(sysfs):
            pytest.skip("no folder here refuses writes by root")
        return sysfs, lambda: None
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked, lambda: locked.chmod(0o755)


def _can_create(folder):
    try:
        (folder / ".tdf_probe").mkdir()
    except OSError:
        return False
    (folder / ".tdf_probe").rmdir()
    return True


def test_fuse_refuses_a_read_only_out_folder(pairs, tmp_path, weights):
    ir, vis = pairs
    locked, unlock = _unwritable_folder(tmp_path)
    try:
        line = one_line_error(tdf("fuse", "--ir", ir, "--vis", vis, "--out", locked / "fused", "--weights", weights))
        assert str(locked / "fused") in line and ("writ" in line or "not permitted" in line or "denied" in line)
        assert not (locked / "fused").exists()
    finally:
        unlock()


def test_fuse_refuses_ir_equal_to_vis(pairs, tmp_path, weights):
    ir, _ = pairs
    line = one_line_error(tdf("fuse", "--ir", ir, "--vis", ir, "--out", tmp_path / "out", "--weights", weights))
    assert "--ir and --vis are the same folder" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ inputs fuse must not misread

def test_fuse_skips_duplicate_stems_huge_and_corrupt_images_and_fuses_the_rest(pairs, tmp_path, weights):
    ir, vis = pairs
    rng = np.random.default_rng(1)
    # a.jpg next to a.png: which one is meant is unknowable; the stem is refused, naming both files.
    cv2.imwrite(str(ir / "a.jpg"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    # 6000×8000 in a folder of small images: refused from its header, before decoding 48 MP.
    from PIL import Image

    for folder in (ir, vis):
        Image.new("1", (8000, 6000)).save(folder / "huge.png")  # 1-bit: a real 48 MP PNG, quick to write
    (ir / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cv2.imwrite(str(vis / "c.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    before = snapshot(ir, vis)
    out = tmp_path / "out"
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", out, "--weights", weights, "--backend", "torch",
              "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["b.png"]
    assert "a: several infrared files share this name (a.jpg, a.png)" in res.stdout
    assert "duplicate name: 1" in res.stdout and "too large: 1" in res.stdout and "unreadable: 1" in res.stdout
    assert "huge: image too large" in res.stdout and "8000x6000" in res.stdout
    assert snapshot(ir, vis) == before
    assert not list(out.rglob("*.tmp"))

    # The bound can be raised (here: lowered) per run or through the environment.
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", tmp_path / "out2", "--weights", weights,
              "--backend", "torch", "--device", "cpu", env={"TDFUSION_EDGE_MAX_PIXELS": str(H * W - 1)})
    assert res.returncode == 1 and "too large: 2" in res.stdout and "Traceback" not in res.stderr


def test_exif_orientation_is_honoured_alike_by_fuse_and_eval(tmp_path, weights):
    from PIL import Image

    rng = np.random.default_rng(2)
    ir, vis, out = tmp_path / "ir", tmp_path / "vis", tmp_path / "out"
    ir.mkdir()
    vis.mkdir()
    cv2.imwrite(str(ir / "p.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    # Stored W×H (portrait sensor), EXIF orientation 6: displayed H×W, the IR image's size.
    stored = rng.integers(0, 256, (W, H, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(vis / "p.jpg", exif=exif.tobytes(), quality=95)
    assert decode_image(vis / "p.jpg").shape == (H, W, 3)
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", out, "--weights", weights, "--backend", "torch",
              "--device", "cpu")
    assert res.returncode == 0 and "done: 1 pair(s)" in res.stdout, res.stdout + res.stderr
    assert cv2.imread(str(out / "p.png"), cv2.IMREAD_UNCHANGED).shape == (H, W)
    res = tdf("eval", "--ir", ir, "--vis", vis, "--fused", out, "--metrics", "EN,SSIM")
    assert res.returncode == 0 and "evaluated 1 of 1" in res.stdout, res.stdout + res.stderr


def test_16bit_sources_are_normalised_alike_by_fuse_eval_and_datasets(tmp_path):
    from tdfusion_edge.data.image_io import read_gray
    from tdfusion_edge.imaging import luma_and_chroma, read_image
    from tdfusion_edge.metrics import load_gray_for_metrics

    rng = np.random.default_rng(3)
    counts = rng.normal(30000, 400, (H, W)).clip(0, 65535).astype(np.uint16)
    counts[0, 0] = 65535  # a hot outlier pixel: percentiles ignore it, ÷256 would not
    path = tmp_path / "thermal.png"
    cv2.imwrite(str(path), counts)
    fuse_y, _ = luma_and_chroma(read_image(path))
    expected = np.rint(normalize_high_depth(counts) * 255)
    np.testing.assert_allclose(np.rint(fuse_y * 255), expected, atol=0)
    np.testing.assert_array_equal(load_gray_for_metrics(path), expected)   # eval
    np.testing.assert_array_equal(read_gray(path), expected)               # datasets
    assert np.ptp(load_gray_for_metrics(path)) > 200   # ÷256 would have left it nearly flat (~117 ± 2)


def test_eval_refuses_bad_output_files_before_evaluating(pairs, tmp_path):
    ir, vis = pairs
    before = snapshot(tmp_path)
    line = one_line_error(tdf("eval", "--ir", ir, "--vis", vis, "--fused", vis, "--csv", tmp_path))
    assert "--csv" in line and "is a folder" in line
    line = one_line_error(tdf("eval", "--ir", ir, "--vis", vis, "--fused", vis, "--json", vis / "a.png"))
    assert "--json" in line and "overwrite the source" in line
    line = one_line_error(tdf("eval", "--ir", ir, "--vis", ir, "--fused", vis))
    assert "same folder" in line
    assert snapshot(tmp_path) == before


def test_eval_names_both_files_of_a_duplicate_stem(pairs, tmp_path):
    ir, vis = pairs
    cv2.imwrite(str(vis / "b.jpg"), np.zeros((H, W, 3), np.uint8))
    table = ir / "metrics.csv"  # a table from an earlier run beside the images: not an input, rewritten
    table.write_text("old\n")
    res = tdf("eval", "--ir", ir, "--vis", vis, "--fused", ir, "--metrics", "EN", "--csv", table)
    assert res.returncode == 0, res.stderr
    assert "skipped b: ambiguous: several files share this name in vis (b.jpg, b.png)" in res.stdout
    assert table.read_text().startswith("image,convention,EN")
    assert not list(ir.glob(".*.tmp"))


def test_flat_pair_is_not_stretched_into_a_full_range_pattern(tmp_path):
    ir, vis, out = tmp_path / "ir", tmp_path / "vis", tmp_path / "out"
    ir.mkdir()
    vis.mkdir()
    rng = np.random.default_rng(4)
    for stem, value in (("black", 0), ("white", 255)):
        cv2.imwrite(str(ir / f"{stem}.png"), np.full((H, W), value, np.uint8))
        cv2.imwrite(str(vis / f"{stem}.png"), np.full((H, W, 3), value, np.uint8))
    cv2.imwrite(str(ir / "scene.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    cv2.imwrite(str(vis / "scene.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", out, "--backend", "torch", "--device", "cpu")  # default weights
    assert res.returncode == 0, res.stderr
    black, white, scene = (cv2.imread(str(out / f"{s}.png"), cv2.IMREAD_UNCHANGED).astype(int)
                           for s in ("black", "white", "scene"))
    assert black.max() - black.min() < 128 and black.mean() < 80      # stretched it would span 0..255
    assert white.max() - white.min() < 128 and white.mean() > 175
    assert scene.min() == 0 and scene.max() == 255                      # a normal pair is stretched as before


# ------------------------------------------------------------------ atomic writes (in-process faults)

class _FullDisk:
    """A file object that accepts half of what is written, then fails like a full disk does."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_disk_full_leaves_no_truncated_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    img = np.random.default_rng(5).integers(0, 256, (H, W), dtype=np.uint8)
    new, old = tmp_path / "new.png", tmp_path / "old.json"
    old.write_text('{"complete": true}\n')
    real_fdopen = os.fdopen
    monkeypatch.setattr(output_path.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OutputPathError, match=r"cannot write .*new\.png: no space left on the device"):
        write_image_atomic(new, img)
    with pytest.raises(OutputPathError, match="no space left"):
        atomic_write_text(old, '{"complete": fal')
    monkeypatch.undo()
    assert not new.exists()
    assert old.read_text() == '{"complete": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # temporary files removed


def test_interrupted_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(output_path.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "x.bin", b"abc")
    monkeypatch.setattr(output_path.os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []
    assert atomic_write_bytes(tmp_path / "x.bin", b"abc").read_bytes() == b"abc"
    assert oct((tmp_path / "x.bin").stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's


def test_output_dir_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        ensure_output_dir(tmp_path / "f")
    with pytest.raises(OutputPathError, match="not a folder"):
        ensure_output_dir(tmp_path / "f" / "sub")
    src = tmp_path / "src"
    src.mkdir()
    (src / "i.png").write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(src)
    with pytest.raises(OutputPathError, match="overwrite the sources"):  # a link to the source folder
        ensure_output_dir(link, inputs=[("--ir", src)])
    assert ensure_output_dir(src / "fused", inputs=[("--ir", src)]).is_dir()  # below the sources is fine
    assert [p.name for p in (src / "fused").iterdir()] == []  # the probe file is gone


def test_image_limits_and_index(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 20), np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((10, 20), np.uint8))
    cv2.imwrite(str(tmp_path / "b.tif"), np.zeros((10, 20), np.uint16))
    index = index_images(tmp_path)
    assert list(index.by_stem) == ["b"] and [p.name for p in index.duplicates["a"]] == ["a.jpg", "a.png"]
    with pytest.raises(ImageTooLarge, match="20x10"):
        decode_image(tmp_path / "b.tif", limit=199)
    assert decode_image(tmp_path / "b.tif", limit=200).dtype == np.uint16
    from tdfusion_edge.validation import image

    monkeypatch.setattr(image, "available_memory", lambda: 2**30)  # 1 GiB free: ~0.45 MP can be fused
    image.check_fusion_memory(480, 640, "vga.png")
    with pytest.raises(ImageTooLarge, match=r"2000x1000: fusing it needs about 4.5 GiB, 1.0 GiB are available"):
        image.check_fusion_memory(1000, 2000, "big.png")
    monkeypatch.setenv("TDFUSION_EDGE_MAX_PIXELS", "1e6")
    assert max_pixels() == 1_000_000 and max_pixels(5) == 5
    monkeypatch.setenv("TDFUSION_EDGE_MAX_PIXELS", "lots")
    with pytest.raises(Exception, match="TDFUSION_EDGE_MAX_PIXELS"):
        max_pixels()


# ------------------------------------------------------------------ the ONNX cache

def _write_mean_graph(path) -> None:
    """A real ONNX file with the fusion graph's contract (ir, vis → fused), here their mean.

    Stands in for the dynamo exporter (minutes on a busy 2-core CPU, tested in test_export_onnx) so that
    the cache logic runs against a real onnxruntime session in milliseconds.
    """
    import onnx
    from onnx import TensorProto, helper

    dims = ["b", 1, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["ir", "vis"], ["s"]), helper.make_node("Mul", ["s", "half"], ["fused"])], "mean",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("ir", "vis")],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, dims)],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.fixture
def fast_export(monkeypatch):
    """Count exports and write the small stand-in graph instead of running the exporter."""
    pytest.importorskip("onnxruntime")
    from tdfusion_edge.export import onnx_export

    calls = []

    def export(net, path, *args, **kwargs):
        calls.append(Path(path))
        _write_mean_graph(path)

    monkeypatch.setattr(onnx_export, "export_fusion_onnx", export)
    return calls


@pytest.fixture(scope="module")
def tiny_net():
    import torch

    torch.manual_seed(0)
    return FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=2)).eval()


def _cache_entry(net, cache: Path) -> Path:
    from tdfusion_edge.export.engine_cache import CacheKey, model_hash

    return CacheKey(model_hash(net), "fp32", shape=None, batch=None, options="float-none-opset18").onnx_path(cache)


def test_corrupt_onnx_cache_entry_is_rebuilt(tiny_net, tmp_path, caplog, fast_export):
    from tdfusion_edge.export.backends import create_backend

    entry = _cache_entry(tiny_net, tmp_path)
    entry.parent.mkdir(parents=True)
    x = np.random.default_rng(6).random((H, W), dtype=np.float32)
    for garbage in (b"\x08\x07 this is not a protobuf of a fusion graph", b""):
        entry.write_bytes(garbage)
        with caplog.at_level(logging.INFO, logger="tdfusion_edge.export.backends"):
            backend = create_backend("onnxruntime", net=tiny_net, cache_dir=tmp_path, threads=1)
        assert backend.name == "onnxruntime" and backend.onnx_path == entry
        np.testing.assert_allclose(backend.fuse(x, 1 - x), 0.5, atol=1e-6)
        assert entry.stat().st_size > 100 and not list(entry.parent.glob("*.tmp"))
    assert "is corrupt" in caplog.text and "rebuilding" in caplog.text
    assert len(fast_export) == 2
    create_backend("onnxruntime", net=tiny_net, cache_dir=tmp_path, threads=1)  # a good entry is reused
    assert len(fast_export) == 2


def test_unwritable_cache_runs_uncached_and_broken_onnxruntime_falls_back_to_torch(tiny_net, tmp_path, caplog,
                                                                                     monkeypatch, fast_export):
    from tdfusion_edge.export import onnx_check
    from tdfusion_edge.export.backends import TorchBackend, create_backend

    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    x = np.random.default_rng(7).random((H, W), dtype=np.float32)
    with caplog.at_level(logging.WARNING):
        backend = create_backend("onnxruntime", net=tiny_net, cache_dir=blocker, threads=1)
    assert backend.name == "onnxruntime" and backend.onnx_path is None
    assert "not writable" in caplog.text and "running uncached" in caplog.text
    np.testing.assert_allclose(backend.fuse(x, x), x, atol=1e-6)
    assert blocker.read_text() == "x"
    caplog.clear()

    def broken(*args, **kwargs):  # what a missing provider library or an ORT build bug looks like
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : cannot create session")

    monkeypatch.setattr(onnx_check, "ort_session", broken)
    for kind in ("onnxruntime", "auto"):
        with caplog.at_level(logging.WARNING):
            backend = create_backend(kind, net=tiny_net, cache_dir=tmp_path / "cache", threads=1)
        assert isinstance(backend, TorchBackend)
        assert "onnxruntime cannot run" in caplog.text
    assert "falling back to the torch backend" in caplog.text


@pytest.mark.slow  # one real ONNX export in the subprocess: ~30 s on an idle 2-core CPU
def test_fuse_with_a_corrupt_onnx_cache_as_a_user_runs_it(pairs, tmp_path, weights):
    pytest.importorskip("onnxruntime")
    from tdfusion_edge.checkpoints import load_fusion_net

    ir, vis = pairs
    cache = tmp_path / "cache"
    entry = _cache_entry(load_fusion_net(weights), cache)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"garbage")
    res = tdf("fuse", "--ir", ir, "--vis", vis, "--out", tmp_path / "out", "--weights", weights,
              "--backend", "onnxruntime", "--device", "cpu", env={"TDFUSION_EDGE_CACHE": str(cache)})
    assert res.returncode == 0 and "done: 2 pair(s)" in res.stdout, res.stdout + res.stderr
    assert "corrupt" in res.stderr and "Traceback" not in res.stderr
    assert entry.stat().st_size > 1000


# ------------------------------------------------------------------ the live app's inputs

def test_corrupt_frame_in_an_image_folder_is_a_counted_skip(tmp_path):
    from tdfusion_edge.apps.reader import ENDED, SourceReader
    from tdfusion_edge.apps.sources import open_source

    rng = np.random.default_rng(8)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    (tmp_path / "f2.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    reader = SourceReader(open_source(str(tmp_path), "ir"), "ir", realtime=False, queue_size=8)
    reader.start()
    reader._thread.join(10)
    assert reader.state == ENDED and reader.captured == 3 and reader.skipped == 1
    assert len(reader.get_all()) == 3


def test_visible_resolution_change_re_derives_the_geometry(caplog):
    from tdfusion_edge.apps.pipeline import Geometry
    from tdfusion_edge.apps.preprocess import create_preprocessor, letterbox_matrix, sampling_matrix

    g = Geometry(None, None)
    g.update((H, W), (2 * H, 2 * W))
    assert g.grid == (2 * H, 2 * W) and g.content is None
    with caplog.at_level(logging.WARNING):
        g.update((H, W), (H, W))        # the camera switched to half resolution
        g.update((H, W), (H, W))
        g.update((H, W), (2 * H, 3 * W))  # and then to another aspect ratio
    assert g.resolution_changes == 2 and caplog.text.count("changed resolution") == 1
    assert g.grid == (2 * H, 2 * W)   # the output size stays (video file, engines)
    np.testing.assert_allclose(g.m_vis, sampling_matrix(letterbox_matrix((2 * H, 3 * W), g.grid)))
    assert g.content is not None      # a wider frame is letterboxed into the old grid
    g.update((H, W), (H, W))
    pre = create_preprocessor("numpy")
    frame = np.random.default_rng(9).integers(0, 256, (H, W), dtype=np.uint8)
    vis_planes = pre.planes(frame, g.m_vis, g.grid)
    ir_planes = pre.planes(frame, g.m_ir, g.grid)   # co-aligned cameras: IR lands where the visible does
    assert vis_planes.y.shape == g.grid
    np.testing.assert_allclose(ir_planes.y, vis_planes.y, atol=1e-5)
    upsized = cv2.resize(frame, (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    assert np.abs(vis_planes.y - upsized).mean() < 0.02  # the whole new frame fills the grid, not a corner of it
