"""``tdfusion-edge distill``: train TDFusion-lite to reproduce a teacher fusion network on real pairs."""
from __future__ import annotations

from pathlib import Path

from tdfusion_edge.errors import TDFusionError

from .common import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "distill", "distil a teacher fusion network into TDFusion-lite (resumable)",
                    "tdfusion-edge distill --teacher default --data data/roadscene data/msrs_det data/m3svd "
                    "--out runs/lite")
    p.add_argument("--teacher", default="default",
                   help="teacher FusionNet: 'default' (built-in weights), a released .pth or any checkpoint of ours")
    p.add_argument("--loss-generator", help="the teacher's loss generator G (its w_ir weights the fusion-loss "
                                            "term); without it w = 1/2")
    p.add_argument("--teacher-backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="backend the teacher runs on while its outputs are cached (default auto)")
    p.add_argument("--data", nargs="+", help="folders with ir/ and vi/ (paired images and/or paired video clips)")
    p.add_argument("--out", help="output folder (default: the checkpoint's folder with --resume)")
    p.add_argument("--resume", help="continue exactly from a distillation state (OUT/last.pt)")
    p.add_argument("--cache", help="teacher-output cache folder (default OUT/teacher_cache)")
    p.add_argument("--steps", type=int, default=4000, help="Adam steps in all (default 4000)")
    p.add_argument("--stop-after", type=int, help="stop after this many steps of this run (resume later)")
    p.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    p.add_argument("--crop", type=int, default=128, help="crop size in pixels (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, cosine decay (default 2e-3)")
    p.add_argument("--lambda-grad", type=float, default=0.5, help="weight of the Sobel L1 term (default 0.5)")
    p.add_argument("--lambda-fusion", type=float, default=0.1, help="weight of the fusion-loss term (default 0.1)")
    p.add_argument("--scales", default="1,0.5", help="image scales the teacher is run at (default 1,0.5)")
    p.add_argument("--video-frames", type=int, default=40, help="frames sampled per video clip (default 40)")
    p.add_argument("--max-pairs", type=int, default=0,
                   help="at most this many image pairs per folder, evenly spaced by name (0: all)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="held-out share where a folder has no val.txt (default 0.15)")
    p.add_argument("--val-every", type=int, default=500, help="held-out PSNR every N steps (default 500)")
    p.add_argument("--checkpoint-every", type=int, default=250, help="write OUT/last.pt every N steps")
    p.add_argument("--log-every", type=int, default=50, help="log loss means every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--width", type=int, default=32, help="student trunk width (default 32)")
    p.add_argument("--refine", type=int, default=16, help="student full-resolution refiner width (default 16)")
    p.add_argument("--refine-hidden", type=int, default=1, help="1×1 layers inside the refiner (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=run)


def _scales(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TDFusionError(f"--scales takes comma-separated numbers such as 1,0.5; got {text!r}") from None


def run(args) -> int:
    import logging

    from tdfusion_edge.train.distill import DistillConfig, run_distill

    if args.resume:
        out = Path(args.out) if args.out else Path(args.resume).resolve().parent
        cfg = DistillConfig()
    else:
        if not args.data:
            raise TDFusionError("give --data FOLDER [FOLDER ...] (or --resume OUT/last.pt)")
        if not args.out:
            raise TDFusionError("give --out FOLDER for the checkpoints and the distilled weights")
        out = Path(args.out)
        cfg = DistillConfig(teacher=args.teacher, loss_generator=args.loss_generator,
                            teacher_backend=args.teacher_backend, data=list(args.data),
                            cache=args.cache, steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr,
                            lambda_grad=args.lambda_grad, lambda_fusion=args.lambda_fusion,
                            scales=_scales(args.scales), video_frames=args.video_frames, max_pairs=args.max_pairs,
                            val_fraction=args.val_fraction, val_every=args.val_every,
                            checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed,
                            threads=args.threads, width=args.width,
                            refine=args.refine, refine_hidden=args.refine_hidden)
    if args.stop_after is not None and args.stop_after < 1:
        raise TDFusionError("--stop-after must be at least 1")
    logging.getLogger("tdfusion_edge.distill").setLevel(logging.INFO)
    path = run_distill(cfg, out, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    print(f"distilled weights: {path}")
    return 0
