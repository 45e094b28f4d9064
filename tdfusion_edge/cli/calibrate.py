"""``tdfusion-edge calibrate``: estimate the IR→visible homography and save it as YAML/JSON."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.homography import read_text_limited
from tdfusion_edge.validation.numbers import NumberError, float_in, parse_number, positive_float

from .common import add_command

# Edge correlation of an --from-images estimate below which it is refused. Measured: the 50 RoadScene
# pairs have median 0.45 (3 below 0.2); featureless or noise images give 0.0-0.15 at 120x160 and larger.
MIN_EDGE_CORRELATION = 0.2
MAX_POINTS_BYTES = 1 << 20

EXAMPLE = ("tdfusion-edge calibrate --pair 12,30:40,61 --pair 300,28:610,58 --pair 305,230:618,470 "
           "--pair 15,235:45,478 --ir ir.png --vis vis.png --refine -o H.yaml")


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "calibrate", "estimate the IR→visible homography from point pairs or edges", EXAMPLE)
    p.add_argument("--pair", action="append", default=[], metavar="IX,IY:VX,VY",
                   help="one IR point and its visible counterpart (pixels); repeat ≥ 4 times")
    p.add_argument("--points", default=None,
                   help="file of point pairs: lines 'ix iy vx vy' (commas or spaces; # comments) or JSON "
                        "{\"ir\": [[x, y], ...], \"vis\": [[x, y], ...]}")
    p.add_argument("--ir", default=None, help="an IR image (or video/camera source: its first frame)")
    p.add_argument("--vis", default=None, help="the visible image taken at the same moment")
    p.add_argument("--from-images", action="store_true",
                   help="no points: align the images' edge maps (scale/rotation/shift search, then affine ECC), "
                        "starting from co-aligned cameras")
    p.add_argument("--refine", action="store_true", help="refine the point-based estimate on the images' edges")
    p.add_argument("--click", action="store_true", help="click the point pairs in a window (needs a display)")
    p.add_argument("--ransac-threshold", type=positive_float, default=3.0, help="RANSAC inlier distance in pixels")
    p.add_argument("--min-correlation", type=float_in(-1.0, 1.0), default=MIN_EDGE_CORRELATION,
                   help=f"--from-images: refuse an estimate whose edge correlation is below this "
                        f"(default {MIN_EDGE_CORRELATION}; unrelated or featureless images score below it)")
    p.add_argument("--preview", default=None, help="write an image of the warped IR blended over the visible one")
    p.add_argument("-o", "--output", required=True, help="where to save the homography (.yaml/.yml or .json)")
    p.set_defaults(func=run)


def parse_pair(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """'12,30:40,61' → ((12, 30), (40, 61))."""
    m = re.fullmatch(r"\s*([^,:]+),([^,:]+):([^,:]+),([^,:]+)\s*", text)
    if not m:
        raise TDFusionError(f"--pair {text!r} should look like IX,IY:VX,VY (e.g. 12,30:40,61)")
    try:
        ix, iy, vx, vy = (parse_number(v, f"--pair {text!r}: coordinate") for v in m.groups())
    except NumberError as exc:
        raise TDFusionError(f"{exc} (expected IX,IY:VX,VY, e.g. 12,30:40,61)") from None
    return (ix, iy), (vx, vy)


def read_points_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Point pairs from a text or JSON file (see --points)."""
    path = Path(path)
    text = read_text_limited(path, "points file", MAX_POINTS_BYTES, TDFusionError)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            ir = np.asarray(data["ir"], np.float64).reshape(-1, 2)
            vis = np.asarray(data["vis"], np.float64).reshape(-1, 2)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
            raise TDFusionError(f"{path}: expected {{\"ir\": [[x, y], ...], \"vis\": [[x, y], ...]}} "
                                f"({str(exc)[:80]})") from None
        if not (np.all(np.isfinite(ir)) and np.all(np.isfinite(vis))):
            raise TDFusionError(f"{path}: point coordinates must be finite numbers")
        return ir, vis
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        values = [v for v in re.split(r"[,\s;]+", line) if v]
        try:
            nums = [parse_number(v, "coordinate") for v in values]
        except NumberError:
            if n == 1:  # a header line such as "ir_x,ir_y,vis_x,vis_y"
                continue
            raise TDFusionError(f"{path}:{n}: not four finite numbers: {line[:60]!r}") from None
        if len(nums) != 4:
            raise TDFusionError(f"{path}:{n}: expected 'ix iy vx vy', got {len(nums)} values")
        rows.append(nums)
    arr = np.asarray(rows, np.float64).reshape(-1, 4)
    return arr[:, :2], arr[:, 2:]


def grab_frame(spec: str, role: str) -> np.ndarray:
    """An image file as stored, or the first frame of any live-app source."""
    from tdfusion_edge.imaging import IMAGE_EXTENSIONS, read_image
    if Path(spec).suffix.lower() in IMAGE_EXTENSIONS and Path(spec).is_file():
        return read_image(spec)
    from tdfusion_edge.apps.sources import open_source
    src = open_source(spec, role)
    src.open()
    try:
        item = src.read()
    finally:
        src.close()
    if item is None:
        raise TDFusionError(f"{role} source {spec} gave no frame")
    return item[0]


def run(args) -> int:
    from tdfusion_edge.apps.registration import (PointFit, check_homography, estimate_from_edges,
                                                  estimate_from_points, save_homography)

    ir_pts, vis_pts = [], []
    for text in args.pair:
        a, b = parse_pair(text)
        ir_pts.append(a)
        vis_pts.append(b)
    if args.points:
        fi, fv = read_points_file(args.points)
        ir_pts += fi.tolist()
        vis_pts += fv.tolist()
    need_images = args.from_images or args.refine or args.click or args.preview
    if need_images and not (args.ir and args.vis):
        raise TDFusionError("--from-images, --refine, --click and --preview need --ir and --vis images")
    ir_img = grab_frame(args.ir, "ir") if args.ir else None
    vis_img = grab_frame(args.vis, "vis") if args.vis else None
    if args.click:
        from tdfusion_edge.apps.click_points import click_point_pairs
        ci, cv = click_point_pairs(ir_img, vis_img)
        ir_pts += ci
        vis_pts += cv

    fit: PointFit | None = None
    if ir_pts:
        fit = estimate_from_points(ir_pts, vis_pts, args.ransac_threshold)
        print(f"{len(ir_pts)} point pairs, {int(fit.inliers.sum())} inliers (RANSAC threshold {args.ransac_threshold} px)")
        for i, (a, b, e, ok) in enumerate(zip(ir_pts, vis_pts, fit.errors, fit.inliers)):
            print(f"  pair {i + 1}: IR ({a[0]:.1f}, {a[1]:.1f}) -> visible ({b[0]:.1f}, {b[1]:.1f}): "
                  f"reprojection error {e:.2f} px{'' if ok else '  (outlier)'}")
        print(f"reprojection error: RMS {fit.rms:.3f} px over inliers, max {fit.errors[fit.inliers].max():.3f} px")
        h = fit.homography
        h.info.update({"method": "points (RANSAC)", "pairs": len(ir_pts), "inliers": int(fit.inliers.sum()),
                       "rms_error_px": round(fit.rms, 4)})
    elif not args.from_images:
        raise TDFusionError("give ≥ 4 point pairs (--pair / --points / --click) or --from-images with --ir and --vis")
    else:
        h = None

    if args.from_images or args.refine:
        h, rho = estimate_from_edges(ir_img, vis_img, initial=h, coarse_search=fit is None)
        print(f"edge alignment: edge correlation {rho:.4f}")
        if rho < args.min_correlation:
            if fit is None:
                raise TDFusionError(
                    f"edge alignment too unsure: edge correlation {rho:.3f} is below --min-correlation "
                    f"{args.min_correlation:g} (unrelated or featureless images score there); nothing saved. "
                    "Give point pairs (--pair/--points/--click), or lower --min-correlation and check the result "
                    "with --preview")
            print(f"warning: edge correlation {rho:.3f} is below {args.min_correlation:g}: the refinement "
                  "is unreliable on these images; check the preview")
        if fit is not None:
            errors = np.linalg.norm(h.apply(np.asarray(ir_pts)) - np.asarray(vis_pts), axis=1)
            print(f"point reprojection error after refinement: RMS {np.sqrt(np.mean(errors ** 2)):.3f} px")
            h.info["rms_error_px_points"] = round(float(np.sqrt(np.mean(errors ** 2))), 4)

    if ir_img is not None and vis_img is not None:
        h.ir_size = (ir_img.shape[1], ir_img.shape[0])
        h.vis_size = (vis_img.shape[1], vis_img.shape[0])
        for warning in check_homography(h, h.ir_size, h.vis_size):
            print(f"warning: {warning}")
    else:
        # Without images the sizes are unknown; check against the area the points span.
        def extent(pts):
            return int(np.max(np.asarray(pts)[:, 0])) + 1, int(np.max(np.asarray(pts)[:, 1])) + 1
        check_homography(h, extent(ir_pts), extent(vis_pts))
    path = save_homography(h, args.output)
    print("homography (IR -> visible):")
    for row in h.matrix:
        print("  [" + ", ".join(f"{v: .6g}" for v in row) + "]")
    print(f"saved {path}")
    if args.preview:
        from tdfusion_edge.apps.click_points import write_preview
        print(f"preview {write_preview(ir_img, vis_img, h, args.preview)}")
    return 0
