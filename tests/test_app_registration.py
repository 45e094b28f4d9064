"""Registration: homography files, degenerate cases, point-based and edge-based estimation, and the
`calibrate` command."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from tdfusion_edge.apps import preprocess as pp
from tdfusion_edge.apps.registration import (Homography, RegistrationError, check_homography, estimate_from_edges,
                                             estimate_from_points, load_homography, save_homography)
from tdfusion_edge.data.synthetic import make_scene

# A plausible IR→visible mapping: a 160×120 thermal core seen inside a 320×240 colour frame.
H_TRUE = np.array([[1.9, 0.04, 12.0], [-0.03, 1.85, 8.0], [1.2e-4, -0.8e-4, 1.0]])
IR_SIZE, VIS_SIZE = (160, 120), (320, 240)


def _grid_points(n=6):
    xs, ys = np.meshgrid(np.linspace(5, 150, n), np.linspace(5, 110, n))
    return np.c_[xs.ravel(), ys.ravel()]


def test_point_estimate_round_trip_and_outlier():
    ir = _grid_points()
    vis = Homography(H_TRUE).apply(ir)
    vis[3] += (25.0, -30.0)  # one badly clicked point
    fit = estimate_from_points(ir, vis, ransac_threshold=2.0)
    assert not fit.inliers[3] and fit.inliers.sum() == len(ir) - 1
    assert fit.rms < 1e-3
    np.testing.assert_allclose(fit.homography.matrix, H_TRUE, rtol=1e-5, atol=1e-7)
    # The registration round trip on pixels: IR → visible grid with the estimate, and back.
    src = make_scene(1, 120, 160, "day").ir.astype(np.float32)
    a = pp.warp_bilinear(src, pp.sampling_matrix(H_TRUE), (240, 320))
    b = pp.warp_bilinear(src, pp.sampling_matrix(fit.homography.matrix), (240, 320))
    np.testing.assert_allclose(a, b, atol=0.05)
    back = pp.warp_bilinear(b, pp.sampling_matrix(np.linalg.inv(fit.homography.matrix)), (120, 160))
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back[inner] - src[inner]).mean() < 2.0


def test_four_points_exact():
    ir = np.array([[0, 0], [159, 0], [159, 119], [0, 119]], float)
    fit = estimate_from_points(ir, Homography(H_TRUE).apply(ir))
    np.testing.assert_allclose(fit.homography.matrix, H_TRUE, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ir, vis, message", [
    ([[0, 0], [1, 1], [2, 2], [3, 3]], [[0, 0], [10, 0], [10, 10], [0, 10]], "collinear"),
    ([[0, 0], [10, 0], [10, 10]], [[0, 0], [10, 0], [10, 10]], "at least 4"),
    ([[0, 0], [10, 0], [10, 10], [0, 10]], [[0, 0], [10, 0], [10, 10]], "pairs"),
])
def test_point_estimate_rejects_bad_input(ir, vis, message):
    with pytest.raises(RegistrationError, match=message):
        estimate_from_points(ir, vis)


def test_degenerate_homographies_rejected():
    with pytest.raises(RegistrationError, match="h33"):
        Homography(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0.0]]))
    with pytest.raises(RegistrationError, match="NaN"):
        Homography(np.full((3, 3), np.nan))
    folded = Homography(np.array([[1.0, 0, 0], [0, 1, 0], [-0.02, 0, 1]]))  # horizon through the image
    with pytest.raises(RegistrationError, match="infinity"):
        check_homography(folded, IR_SIZE, VIS_SIZE)
    mirror_pts = np.array([[0, 0], [159, 0], [159, 119], [0, 119]], float)
    twisted = estimate_from_points(mirror_pts, [[0, 0], [319, 239], [319, 0], [0, 239]], 50).homography
    with pytest.raises(RegistrationError, match="degenerate|folded"):
        check_homography(twisted, IR_SIZE, VIS_SIZE)
    with pytest.raises(RegistrationError, match="outside"):
        check_homography(Homography(np.array([[1, 0, 5000], [0, 1, 0], [0, 0, 1.0]])), IR_SIZE, VIS_SIZE)
    tiny = Homography(np.diag([1e-3, 1e-3, 1.0]))
    with pytest.raises(RegistrationError, match="shrinks"):
        check_homography(tiny, IR_SIZE, VIS_SIZE)
    assert check_homography(Homography(H_TRUE), IR_SIZE, VIS_SIZE) == []


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    h = Homography(H_TRUE * 3.0, IR_SIZE, VIS_SIZE, {"rms_error_px": 0.5})
    loaded = load_homography(save_homography(h, tmp_path / f"H{suffix}"))
    np.testing.assert_allclose(loaded.matrix, H_TRUE)  # normalised so that h33 = 1
    assert loaded.ir_size == IR_SIZE and loaded.vis_size == VIS_SIZE and loaded.info["rms_error_px"] == 0.5


def test_load_opencv_yaml_and_bad_files(tmp_path):
    fs = cv2.FileStorage(str(tmp_path / "cv.yml"), cv2.FILE_STORAGE_WRITE)
    fs.write("homography", H_TRUE)
    fs.release()
    np.testing.assert_allclose(load_homography(tmp_path / "cv.yml").matrix, H_TRUE)
    (tmp_path / "bad.json").write_text(json.dumps({"homography": [[1, 2], [3, 4]]}))
    with pytest.raises(RegistrationError, match="3×3"):
        load_homography(tmp_path / "bad.json")
    (tmp_path / "none.yaml").write_text("foo: 1\n")
    with pytest.raises(RegistrationError, match="no 'homography'"):
        load_homography(tmp_path / "none.yaml")
    with pytest.raises(RegistrationError, match="not found"):
        load_homography(tmp_path / "missing.yaml")


def _thermal_like(vis: np.ndarray) -> np.ndarray:
    """An IR-looking image sharing the scene's outlines: inverted, gamma-curved, soft."""
    y = cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    return np.round(255 * cv2.GaussianBlur((1.0 - y) ** 1.8, (0, 0), 1.2)).astype(np.uint8)


def test_edge_based_estimate_recovers_small_misalignment():
    vis = make_scene(3, 240, 320, "day").vis
    h_true = np.array([[1.03, 0.02, -5.0], [-0.015, 1.02, 4.0], [0.0, 0.0, 1.0]])  # IR → visible
    ir = cv2.warpPerspective(_thermal_like(vis), np.linalg.inv(h_true), (320, 240), borderMode=cv2.BORDER_REFLECT)
    h, rho = estimate_from_edges(ir, vis)
    err = np.linalg.norm(h.apply(_grid_points() * 1.8 + 20) - Homography(h_true).apply(_grid_points() * 1.8 + 20), axis=1)
    assert rho > 0.5 and np.median(err) < 1.0, (rho, err)


def test_edge_based_estimate_on_roadscene(roadscene):
    from tdfusion_edge.imaging import read_image
    h_true = np.array([[1.02, 0.015, -4.0], [-0.012, 1.01, 3.0], [0.0, 0.0, 1.0]])
    errors = []
    for path in sorted((roadscene / "ir").iterdir())[:4]:
        ir0, vis = read_image(path), read_image(roadscene / "vi" / path.name)
        hh, ww = vis.shape[:2]
        ir = cv2.warpPerspective(ir0, np.linalg.inv(h_true), (ww, hh), borderMode=cv2.BORDER_REFLECT)
        h, _ = estimate_from_edges(ir, vis)
        pts = np.c_[np.linspace(20, ww - 20, 9), np.linspace(20, hh - 20, 9)]
        errors.append(np.median(np.linalg.norm(h.apply(pts) - Homography(h_true).apply(pts), axis=1)))
    assert np.median(errors) < 4.0, errors  # a few pixels: the dataset's own registration is not exact


def _calibrate_main(argv):
    from tdfusion_edge.cli import calibrate
    parser = argparse.ArgumentParser()
    calibrate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["calibrate", *argv])
    return args.func(args)


def test_calibrate_command_points_and_file(tmp_path, capsys):
    ir = np.array([[10, 12], [150, 9], [148, 110], [12, 108], [80, 60]], float)
    vis = Homography(H_TRUE).apply(ir)
    pairs = [f"{a[0]},{a[1]}:{b[0]:.4f},{b[1]:.4f}" for a, b in zip(ir, vis)]
    argv = [x for p in pairs[:4] for x in ("--pair", p)]
    (tmp_path / "pts.txt").write_text("ir_x ir_y vis_x vis_y\n" + f"{ir[4][0]} {ir[4][1]} {vis[4][0]} {vis[4][1]}\n")
    assert _calibrate_main(argv + ["--points", str(tmp_path / "pts.txt"), "-o", str(tmp_path / "H.yaml")]) == 0
    out = capsys.readouterr().out
    assert "reprojection error: RMS" in out and "5 point pairs" in out
    np.testing.assert_allclose(load_homography(tmp_path / "H.yaml").matrix, H_TRUE, rtol=1e-3, atol=1e-5)


def test_calibrate_command_rejects_degenerate(tmp_path):
    argv = ["--pair", "0,0:0,0", "--pair", "1,1:10,10", "--pair", "2,2:20,20", "--pair", "3,3:30,30",
            "-o", str(tmp_path / "H.yaml")]
    with pytest.raises(RegistrationError, match="collinear"):
        _calibrate_main(argv)
    assert not (tmp_path / "H.yaml").exists()


def test_calibrate_from_images_writes_preview(tmp_path):
    from tdfusion_edge.imaging import write_image
    scene = make_scene(5, 240, 320, "day")
    write_image(tmp_path / "ir.png", cv2.resize(_thermal_like(scene.vis), (160, 120), interpolation=cv2.INTER_AREA))
    write_image(tmp_path / "vis.png", scene.vis)
    assert _calibrate_main(["--ir", str(tmp_path / "ir.png"), "--vis", str(tmp_path / "vis.png"), "--from-images",
                            "--preview", str(tmp_path / "preview.jpg"), "-o", str(tmp_path / "H.json")]) == 0
    h = load_homography(tmp_path / "H.json")
    np.testing.assert_allclose(h.apply([[20, 15], [140, 105]]), [[40.5, 30.5], [280.5, 210.5]], atol=2.5)
    assert h.ir_size == (160, 120) and (tmp_path / "preview.jpg").is_file()


def test_calibrate_points_refined_on_edges(tmp_path, capsys):
    from tdfusion_edge.imaging import write_image
    scene = make_scene(6, 240, 320, "day")
    write_image(tmp_path / "ir.png", cv2.resize(_thermal_like(scene.vis), (160, 120), interpolation=cv2.INTER_AREA))
    write_image(tmp_path / "vis.png", scene.vis)
    truth = Homography.scaling((160, 120), (320, 240))
    ir = np.array([[10, 10], [150, 12], [148, 110], [12, 108]], float)
    vis = truth.apply(ir) + np.array([[1.5, -1.0], [-1.0, 1.5], [1.0, 1.0], [-1.5, -1.0]])  # clicking errors
    argv = [x for a, b in zip(ir, vis) for x in ("--pair", f"{a[0]},{a[1]}:{b[0]},{b[1]}")]
    assert _calibrate_main(argv + ["--ir", str(tmp_path / "ir.png"), "--vis", str(tmp_path / "vis.png"), "--refine",
                                   "-o", str(tmp_path / "H.yaml")]) == 0
    assert "after refinement" in capsys.readouterr().out
    h = load_homography(tmp_path / "H.yaml")
    points_only = estimate_from_points(ir, vis).homography
    pts = _grid_points()
    err = np.linalg.norm(h.apply(pts) - truth.apply(pts), axis=1)
    err_points = np.linalg.norm(points_only.apply(pts) - truth.apply(pts), axis=1)
    assert h.info["method"].startswith("points refined")
    assert np.median(err) < 0.8 * np.median(err_points) and err.max() < 3.0
