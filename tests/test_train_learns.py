"""Short CPU runs on synthetic night scenes whose people and cars only the infrared image shows.

1. The full method (Algorithm 1): the task loss falls and G is meta-learned (its weights move every
   meta step by the released max-normalised rule).
2. Where the task loss reaches G's weights directly (Table 3's variant V: the fused image is G's
   weighted average), G raises its IR weight inside the IR-only objects, above where it started
   and above ½: the data carries the signal the method is meant to pick up.

What the full method does with G's weights here is reported, not asserted: at this scale (tiny F,
48×64 images, minutes) the meta-gradient reaches G only through one shared-parameter step of F, which
spreads any per-pixel preference over the whole image, and its sign then follows T's overall
preference for a brighter or darker image (measured with ``python -m tdfusion_edge.train.meta_probe``;
see docs/training.md, "What G learns").
"""
from __future__ import annotations

import pytest

from tdfusion_edge.train.config import build_config
from tdfusion_edge.train.trainer import Trainer

TINY = "{dim: 4, num_blocks: 1, heads: 2}"
NIGHT = "synthetic={train: 32, val: 8, image_size: [48, 64], condition: night}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def night_config(*extra: str):
    return build_config(overrides=[
        NIGHT, "crop_size=32", f"fusion_net={TINY}", f"loss_generator={TINY}", "num_workers=0", "lr=1e-3",
        "metric_samples=1", "eval_samples=8", "weight_map_samples=4", "checkpoint_every=1000",
        "keep_epoch_checkpoints=false", *extra])


def test_full_method_lowers_task_loss_and_meta_learns_g(tmp_path):
    cfg = night_config("epochs=4", "meta_steps=12", "fusion_steps=8", "g_lr=3e-3")
    trainer = Trainer(cfg, tmp_path, progress=False)
    g_start = {k: v.clone() for k, v in trainer.loss_gen.state_dict().items()}
    history = trainer.fit()
    first, last = history[1], history[-1]
    print(f"\nfull method: outer L_t {first['meta_loss_t_outer']:.3f} -> {last['meta_loss_t_outer']:.3f}, "
          f"fusion-phase L_t {first['fusion_loss_t']:.3f} -> {last['fusion_loss_t']:.3f}, "
          f"w_ir on IR-only objects {history[0]['w_ir_in_ir_only']:.3f} -> {last['w_ir_in_ir_only']:.3f}, "
          f"mean w_ir {history[0]['w_ir_mean']:.3f} -> {last['w_ir_mean']:.3f}")
    assert last["meta_loss_t_outer"] < 0.5 * first["meta_loss_t_outer"]
    assert last["fusion_loss_t"] < 0.7 * first["fusion_loss_t"]
    assert last["meta_loss_f"] < first["meta_loss_f"]
    # each meta step moves G's largest-gradient parameter by g_lr (released rule); they add up
    moved = max(float((v - g_start[k]).abs().max()) for k, v in trainer.loss_gen.state_dict().items())
    assert moved > 2 * 3e-3
    assert last["meta_g_grad_max"] > 0


def test_g_raises_ir_weight_on_ir_only_objects_when_the_task_loss_reaches_it(tmp_path):
    cfg = night_config("ablations=weighted_average", "epochs=4", "fusion_steps=10")
    history = Trainer(cfg, tmp_path, progress=False).fit()
    start, end = history[0]["w_ir_in_ir_only"], history[-1]["w_ir_in_ir_only"]
    print(f"\nvariant V: w_ir on IR-only objects {start:.3f} -> {end:.3f}, "
          f"task loss {history[1]['fusion_loss_t']:.3f} -> {history[-1]['fusion_loss_t']:.3f}")
    assert end > start + 0.03
    assert end > 0.5
    assert history[-1]["fusion_loss_t"] < 0.6 * history[1]["fusion_loss_t"]
    assert (tmp_path / "weight_maps" / "epoch_004.png").is_file()
