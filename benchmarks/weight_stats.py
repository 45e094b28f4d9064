"""What a trained G gives on real frames: mean w_ir on labelled objects vs background, day vs night,
and a panel of its weight maps with the boxes outlined (not a pytest test; run once per model).

    python benchmarks/weight_stats.py --loss-gen runs/msrs_det/best_loss_generator.pt \\
        --fusion runs/msrs_det/best_fusion_net.pt --data tdfusion_edge/configs/msrs_det.yaml \\
        --root ../shared/data/msrs_det --split val --out runs/weight_stats

Writes ``weight_stats.json`` (also for a freshly initialised G of the same size and seed, the start of
training), the same as a Markdown table in ``weight_stats.md``, and ``weight_maps.png`` (the first day
and night frames of the split).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss-gen", required=True, help="LossGenerator checkpoint (loss_generator.pt of a run)")
    p.add_argument("--fusion", help="FusionNet checkpoint for the fused column of the figure (optional)")
    p.add_argument("--data", required=True, help="detection dataset YAML")
    p.add_argument("--root", help="dataset root (overrides the YAML's path:)")
    p.add_argument("--split", default="val")
    p.add_argument("--task-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="frame size G sees (default: the YAML's task_size)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the freshly initialised G reported alongside")
    p.add_argument("--frames", type=int, default=4, help="frames in the figure (half day, half night)")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tdfusion_edge.errors import TDFusionError

    args = _args(argv)
    try:
        return _run(args)
    except TDFusionError as exc:  # a wrong file or dataset: one line, as the CLI says it
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tdfusion_edge.checkpoints import load_model
    from tdfusion_edge.data.build import build_dataset
    from tdfusion_edge.data.spec import load_dataset_yaml
    from tdfusion_edge.models import LossGenerator
    from tdfusion_edge.train.trainer import seed_everything
    from tdfusion_edge.train.weight_maps import save_weight_maps
    from tdfusion_edge.train.weight_stats import box_mask, condition_of, weight_statistics

    # both models first: a wrong file fails before any frame is read
    loss_gen, info = load_model(args.loss_gen, "LossGenerator")  # a path or a built-in name (tdfusion-msrs)
    fusion = load_model(args.fusion, "FusionNet")[0] if args.fusion else None
    spec = load_dataset_yaml(args.data, root=args.root)
    size = tuple(args.task_size) if args.task_size else None
    dataset = build_dataset(spec, args.split, views=("task",), **({"task_size": size} if size else {}))
    seed_everything(args.init_seed)
    fresh = LossGenerator(loss_gen.config).eval()
    samples = [dataset[i] for i in tqdm(range(len(dataset)), desc=f"load {args.split}")]
    names = list(spec.names)
    result = {"loss_gen": str(args.loss_gen), "provenance": info.get("provenance", {}), "split": args.split,
              "data": str(spec.source), "frame_size": list(samples[0]["ir"].shape[-2:]),
              "trained": weight_statistics(loss_gen, samples, names, progress=lambda it: tqdm(it, desc="G trained")),
              f"initialised_seed{args.init_seed}": weight_statistics(fresh, samples, names,
                                                                     progress=lambda it: tqdm(it, desc="G at init"))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "weight_stats.json").write_text(json.dumps(result, indent=2))
    (out / "weight_stats.md").write_text(markdown(result, names, f"initialised_seed{args.init_seed}"))

    picks = _pick_frames(samples, args.frames, condition_of)
    ir = torch.stack([samples[i]["ir"] for i in picks])
    vis = torch.stack([samples[i]["vis"] for i in picks])
    with torch.no_grad():
        w = loss_gen(ir, vis)[:, :1]
        fused = fusion(ir, vis) if fusion is not None else None
    h, wd = ir.shape[-2:]
    outlines = [box_mask(samples[i]["boxes"], h, wd) for i in picks]
    save_weight_maps(out / "weight_maps.png", ir, vis, w, fused, outlines=outlines,
                     title=f"G's w_ir on {args.split} frames ({', '.join(samples[i]['name'] for i in picks)}); "
                           "labelled boxes outlined")
    t = result["trained"]
    for cond in ("all", "day", "night"):
        if cond in t and "objects" in t[cond]:
            r = t["brighter_source_rule"][cond]
            print(f"{cond:>5}: w_ir objects {t[cond]['objects']:.4f}  background {t[cond]['background']:.4f}   "
                  f"(brighter-source rule: {r['objects']:.4f} / {r['background']:.4f})")
    print(f"agree with brighter source {t['agree_with_brighter_source']:.3f}, "
          f"corr with ir-vis {t['corr_with_ir_minus_vis']:.3f}; wrote {out}")
    return 0


def markdown(result: dict, names: list[str], init_key: str) -> str:
    """Mean w_ir per region and condition: trained G, G at initialisation, the brightness rule."""
    t, i = result["trained"], result[init_key]
    rule = t["brighter_source_rule"]
    regions = ["objects", "background", *names]
    lines = ["| frames | G | " + " | ".join(regions) + " |", "|---|---|" + "---|" * len(regions)]
    for cond in ("all", "day", "night"):
        if cond not in t:
            continue
        count = sum(t["frames"].values()) if cond == "all" else t["frames"].get(cond, 0)
        for label, table in (("trained", t[cond]), ("at init", i[cond]), ("brightness rule", rule[cond])):
            cells = [f"{table[r]:.3f}" if r in table else "–" for r in regions]
            lines.append(f"| {cond} ({count}) | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"w_ir > ½ exactly where I_ir > I_vis: trained {t['agree_with_brighter_source']:.1%}, at init "
                 f"{i['agree_with_brighter_source']:.1%}; mean per-frame correlation of w_ir with I_ir − I_vis: "
                 f"trained {t['corr_with_ir_minus_vis']:+.3f}, at init {i['corr_with_ir_minus_vis']:+.3f}.")
    return "\n".join(lines) + "\n"


def _pick_frames(samples: list[dict], count: int, condition_of) -> list[int]:
    """The first frames with boxes, alternating day and night."""
    by_cond: dict[str, list[int]] = {"day": [], "night": []}
    for i, s in enumerate(samples):
        cond = condition_of(s["name"])
        if cond in by_cond and len(s["boxes"]):
            by_cond[cond].append(i)
    picks: list[int] = []
    while len(picks) < count and (by_cond["day"] or by_cond["night"]):
        for cond in ("day", "night"):
            if by_cond[cond] and len(picks) < count:
                picks.append(by_cond[cond].pop(0))
    return picks or list(range(min(count, len(samples))))


if __name__ == "__main__":
    sys.exit(main())
