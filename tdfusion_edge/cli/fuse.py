"""``tdfusion-edge fuse``: fuse every IR/visible pair of two folders."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from tdfusion_edge.errors import ImageReadError, PairingError, TDFusionError
from tdfusion_edge.imaging import load_pair, scan_pairs, write_image
from tdfusion_edge.inference import STRETCH_MODES, fuse_pair
from tdfusion_edge.validation.image import (IMAGE_EXTENSIONS, ImageTooLarge, check_distinct_inputs,
                                            check_fusion_memory, max_pixels)
from tdfusion_edge.validation.output_path import OutputPathError, ensure_output_dir

from .common import add_command, existing_dir

log = logging.getLogger("tdfusion_edge.fuse")
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "fuse", "fuse paired infrared/visible images of two folders",
                    "tdfusion-edge fuse --ir data/ir --vis data/vi --out fused/ "
                    "--weights ReFusion_IVIF.pth --device cpu")
    p.add_argument("--ir", required=True, help="folder of infrared images")
    p.add_argument("--vis", required=True, help="folder of visible images (paired by file stem)")
    p.add_argument("--out", required=True, help="output folder: gray PNGs, colour PNGs under color/")
    p.add_argument("--weights", default=None,
                   help="fusion checkpoint (released layout or ours), or a built-in name: default, "
                        "lite (TDFusion-lite, ~30x cheaper), tdfusion-msrs (task-driven on MSRS detection); default: the "
                        "built-in weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="inference backend")
    p.add_argument("--half", action="store_true", help="FP16 inference (GPU backends)")
    p.add_argument("--resize", action="store_true", help="resize IR to the visible size when sizes differ")
    p.add_argument("--stretch", default="minmax", choices=STRETCH_MODES,
                   help="output stretch: per-image min/max as the released inference (default) or none")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images larger than this many pixels, read from the header before decoding "
                        "(default 40e6 or $TDFUSION_EDGE_MAX_PIXELS)")
    p.set_defaults(func=run)


def run(args) -> int:
    ir_dir, vis_dir = existing_dir(args.ir, "--ir"), existing_dir(args.vis, "--vis")
    check_distinct_inputs([("--ir", ir_dir), ("--vis", vis_dir)])
    limit = max_pixels(args.max_pixels)
    out = Path(args.out)
    inputs = [("--ir", ir_dir), ("--vis", vis_dir)]
    # Before anything slow: an --out that is a file, a source folder or holds sources is refused.
    ensure_output_dir(out, "--out", inputs, IMAGE_EXTENSIONS, create=False)
    scan = scan_pairs(ir_dir, vis_dir)
    skipped: Counter[str] = Counter()
    reasons: list[str] = []
    for path in scan.ir_only:
        reasons.append(f"{path.name}: no visible partner")
    for path in scan.vis_only:
        reasons.append(f"{path.name}: no infrared partner")
    skipped["missing partner"] += len(scan.ir_only) + len(scan.vis_only)
    reasons.extend(scan.duplicates)  # a.png and a.jpg: which one is meant is unknowable, so neither is used
    skipped["duplicate name"] += len(scan.duplicates)
    if not scan.pairs:
        refused = f" ({len(scan.duplicates)} refused: {scan.duplicates[0]})" if scan.duplicates else ""
        raise TDFusionError(f"no IR/visible pairs with matching file names in {ir_dir} and {vis_dir}{refused}")
    from tdfusion_edge.export.backends import create_backend  # imports torch: after the quick checks

    backend = create_backend(args.backend, weights=args.weights, device=args.device, half=args.half)
    try:
        ensure_output_dir(out, "--out", inputs, IMAGE_EXTENSIONS)
    except OutputPathError:
        backend.close()
        raise
    print(f"fusing {len(scan.pairs)} pairs with the {backend.name} backend")
    done, net_seconds, total_seconds = 0, 0.0, 0.0
    try:
        for stem, ir_path, vis_path in tqdm(scan.pairs, desc="fuse", unit="pair"):
            start = time.perf_counter()
            try:
                pair = load_pair(ir_path, vis_path, resize=args.resize, limit=limit)
            except ImageTooLarge as exc:
                skipped["too large"] += 1
                reasons.append(f"{stem}: {exc}")
                continue
            except ImageReadError as exc:
                skipped["unreadable"] += 1
                reasons.append(f"{stem}: {exc}")
                continue
            except PairingError as exc:
                skipped["size mismatch"] += 1
                reasons.append(f"{stem}: {exc}")
                continue
            t_net = time.perf_counter()
            try:
                if backend.device == "cpu":  # an image that fits the decoder may still not fit a fusion pass
                    check_fusion_memory(*pair.ir_y.shape, ir_path.name)
                fused = fuse_pair(backend, pair, args.stretch)
            except (ImageTooLarge, MemoryError) as exc:
                skipped["too large"] += 1
                reasons.append(f"{stem}: {str(exc) or 'out of memory'}")
                continue
            net_seconds += time.perf_counter() - t_net
            try:  # atomic writes: a failure leaves no partial file; disk full or read-only ends the run
                write_image(out / f"{stem}.png", fused.gray)
                if fused.color is not None:
                    write_image(out / "color" / f"{stem}.png", fused.color)
            except OutputPathError as exc:
                raise OutputPathError(f"{exc} (stopped after {done} of {len(scan.pairs)} pairs)") from None
            total_seconds += time.perf_counter() - start
            done += 1
    finally:
        backend.close()
    print(f"done: {done} pair(s) fused into {out}")
    if done:
        print(f"mean per pair: {1000 * total_seconds / done:.1f} ms total, {1000 * net_seconds / done:.1f} ms fusion")
    if reasons:
        print(f"skipped: {sum(skipped.values())} ({', '.join(f'{k}: {v}' for k, v in skipped.items() if v)})")
        for line in reasons:
            print(f"  - {line}")
    return 0 if done else 1
