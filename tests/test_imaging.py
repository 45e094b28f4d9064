"""Image reading, colour handling and folder pairing."""
import cv2
import numpy as np
import pytest

from tdfusion_edge.errors import ImageReadError, PairingError
from tdfusion_edge.imaging import (compose_output, load_pair, luma_and_chroma, merge_chroma,
                                   normalize_thermal, read_image, scan_pairs, stretch_minmax, write_image)


def test_read_formats_and_depths(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    for ext in (".png", ".bmp", ".tiff"):
        cv2.imwrite(str(tmp_path / f"c{ext}"), colour)
        assert np.array_equal(read_image(tmp_path / f"c{ext}"), colour)
    cv2.imwrite(str(tmp_path / "t16.png"), gray16)
    img = read_image(tmp_path / "t16.png")
    assert img.dtype == np.uint16 and np.array_equal(img, gray16)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([colour, np.full((20, 30), 255, np.uint8)]))
    assert read_image(tmp_path / "rgba.png").shape == (20, 30, 3)


def test_unreadable_images_raise_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("bad.png", "empty.jpg", "missing.png"):
        with pytest.raises(ImageReadError) as err:
            read_image(tmp_path / name)
        assert "\n" not in str(err.value)


def test_luma_matches_released_float_ycrcb():
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    y, crcb = luma_and_chroma(bgr)
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    np.testing.assert_allclose(y * 255, 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-3)
    assert crcb.shape == (8, 9, 2)
    gray3 = np.repeat(bgr[:, :, :1], 3, axis=2)
    y3, c3 = luma_and_chroma(gray3)
    assert c3 is None
    np.testing.assert_allclose(y3 * 255, gray3[:, :, 0], atol=1e-3)


def test_thermal_16bit_normalisation_is_robust_to_outliers():
    img = np.full((50, 50), 3000, np.uint16)
    img[10:20, 10:20] = 5000
    img[0, 0] = 65535  # a dead-hot pixel must not squash the scene's contrast
    y = normalize_thermal(img)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    assert y[15, 15] > 0.9 and y[40, 40] < 0.1
    assert np.allclose(normalize_thermal(np.full((4, 4), 7, np.uint16)), 0.5)


def test_chroma_merge_weights_by_saturation():
    neutral = np.full((2, 2, 2), 128, np.float32)
    vivid = np.full((2, 2, 2), 200, np.float32)
    np.testing.assert_allclose(merge_chroma(neutral, vivid), 200, atol=0.01)
    assert merge_chroma(None, vivid) is vivid and merge_chroma(None, None) is None


def test_compose_and_stretch():
    y = np.linspace(0.2, 0.6, 12, dtype=np.float32).reshape(3, 4)
    s = stretch_minmax(y)
    assert s.min() == 0 and s.max() == 1
    assert compose_output(s, None).dtype == np.uint8
    bgr = compose_output(s, np.full((3, 4, 2), 128, np.float32))
    assert bgr.shape == (3, 4, 3) and np.all(np.abs(bgr[:, :, 0].astype(int) - bgr[:, :, 2]) <= 1)
    assert np.all(stretch_minmax(np.ones((2, 2), np.float32)) == 0)


def test_scan_pairs_and_load(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vis").mkdir()
    rng = np.random.default_rng(2)
    write_image(tmp_path / "ir/a.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
    write_image(tmp_path / "vis/a.jpg", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    write_image(tmp_path / "ir/b.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    write_image(tmp_path / "vis/b.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    write_image(tmp_path / "ir/only_ir.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    scan = scan_pairs(tmp_path / "ir", tmp_path / "vis")
    assert [p[0] for p in scan.pairs] == ["a", "b"]
    assert [p.name for p in scan.ir_only] == ["only_ir.png"] and scan.vis_only == []
    pair = load_pair(*scan.pairs[0][1:])
    assert pair.ir_y.shape == pair.vis_y.shape == (10, 12) and pair.chroma.shape == (10, 12, 2)
    with pytest.raises(PairingError, match="size mismatch"):
        load_pair(*scan.pairs[1][1:])
    resized = load_pair(*scan.pairs[1][1:], resize=True)
    assert resized.resized and resized.ir_y.shape == (10, 12)


def test_colour_round_trip_and_neutral_chroma():
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    y, crcb = luma_and_chroma(bgr)
    assert np.abs(compose_output(y, crcb).astype(int) - bgr).max() <= 1
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[:, :, 1:].astype(np.float32)
    assert np.abs(crcb - ref).max() <= 1.0  # 8-bit conversion is fixed-point and rounds; neutral 128 in both
