"""Short CPU runs on synthetic night scenes whose people and cars only the infrared image shows.

1. The full method's meta step (Algorithm 1, released max-normalised G update): G's updates lower the
   task loss L_t(T'(F'(x))) on held-out scenes, ten times more than random steps of the same size; with
   the meta update disabled the test fails. (The trainer-level test this replaces passed whatever G
   learned: the task loss fell because T learned class frequencies, its mIoU stayed at the
   all-background 0.3028.)
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

import copy

import pytest
import torch

from meta_nets import TinySegmenter, make_nets
from tdfusion_edge.data import SyntheticPairs, collate_fn
from tdfusion_edge.train.config import build_config
from tdfusion_edge.train.meta_step import MetaHyper, max_normalised_step_, meta_objective, meta_step
from tdfusion_edge.train.trainer import Trainer

TINY = "{dim: 4, num_blocks: 1, heads: 2}"
NIGHT = "synthetic={train: 32, val: 8, image_size: [48, 64], condition: night}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def night_config(*extra: str):
    return build_config(overrides=[
        NIGHT, "crop_size=32", f"fusion_net={TINY}", f"loss_generator={TINY}", "num_workers=0", "lr=1e-3",
        "metric_samples=1", "eval_samples=8", "weight_map_samples=4", "checkpoint_every=1000",
        "keep_epoch_checkpoints=false", *extra])


def _scene_batches(base_seed: int, count: int, batch: int = 2) -> list[dict]:
    """Collated float64 batches of synthetic night scenes (IR-only people and cars), 32×48."""
    scenes = SyntheticPairs(length=count * batch, task="seg", height=32, width=48, base_seed=base_seed,
                            condition="night", crop_size=32)
    out = []
    for i in range(count):
        b = collate_fn([scenes[i * batch + j] for j in range(batch)])
        out.append({**b, **{k: b[k].double() for k in ("ir", "vis", "crop_ir", "crop_vis")}})
    return out


def test_meta_updates_of_g_lower_the_task_loss_on_held_out_scenes():
    """What the full method guarantees: each meta step moves θ_G down the meta-gradient of
    L_t(T'(F'(x))), so G's updates lower that loss on scenes it never saw, far more than steps of the
    same size in a random direction (F and T stay fixed, so only G can have changed it). With the meta
    update disabled the held-out loss does not move and this test fails."""
    nets = make_nets(torch.float64)
    train, held_out = _scene_batches(0, 16), _scene_batches(1_000_000, 4)
    t_opt = torch.optim.Adam(nets.task_net.parameters(), lr=1e-2)
    for b in train:  # T first learns something on F's output, so that its loss has a direction to ask for
        with torch.no_grad():
            fused = nets.fusion_net(b["ir"], b["vis"])
        t_opt.zero_grad()
        nets.task_net(TinySegmenter.to_task_input(fused), b["mask"]).backward()
        t_opt.step()
    # inner lr 0.3: G acts on L_t only through one step of F, so its effect scales with that step
    hyper = MetaHyper(inner_lr=0.3, task_lr=1e-2)
    g_lr = 3e-3

    def held_out_loss() -> float:
        g_params = dict(nets.loss_gen.named_parameters())
        pairs = [(held_out[i], held_out[i + 1]) for i in range(0, len(held_out), 2)]
        return sum(meta_objective(nets, g_params, a, b, hyper, t_opt)[0].item() for a, b in pairs) / len(pairs)

    g_start = copy.deepcopy(nets.loss_gen.state_dict())
    w_start = nets.loss_gen(held_out[0]["ir"], held_out[0]["vis"])[:, :1].detach()
    before = held_out_loss()
    for i in range(0, len(train), 2):
        meta_step(nets, train[i], train[i + 1], hyper, "maxnorm", g_lr, t_opt)
    meta_drop = before - held_out_loss()
    w_moved = float((nets.loss_gen(held_out[0]["ir"], held_out[0]["vis"])[:, :1].detach() - w_start).abs().mean())

    nets.loss_gen.load_state_dict(g_start)  # control: the same number of max-normalised steps, random directions
    gen = torch.Generator().manual_seed(0)
    params = dict(nets.loss_gen.named_parameters())
    for _ in range(0, len(train), 2):
        max_normalised_step_(params, {k: torch.randn(p.shape, generator=gen, dtype=p.dtype)
                                      for k, p in params.items()}, g_lr)
    random_change = abs(before - held_out_loss())
    print(f"\nheld-out L_t {before:.6f}: meta steps lower it by {meta_drop:.3e}, random steps move it by "
          f"{random_change:.3e}; mean |Δw_ir| {w_moved:.3f}")
    assert w_moved > 0.01
    assert meta_drop > 2e-5
    assert meta_drop > 10 * random_change


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
