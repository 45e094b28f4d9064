"""Resume continues exactly (same parameters, optimizer state and logs as an uninterrupted run), and a
NaN/Inf loss stops training with a clear message while the last good checkpoint stays as it was."""
from __future__ import annotations

import hashlib

import pytest
import torch

from tdfusion_edge.train.config import build_config
from tdfusion_edge.train.state import load_state
from tdfusion_edge.train.trainer import Trainer, TrainingDiverged

TINY_NET = "{dim: 4, num_blocks: 1, heads: 2}"


def tiny_config(**extra):
    overrides = ["epochs=2", "meta_steps=3", "fusion_steps=2", "num_workers=0", "crop_size=24",
                 "synthetic={train: 8, val: 2, image_size: [32, 48]}", f"fusion_net={TINY_NET}",
                 f"loss_generator={TINY_NET}", "metric_samples=1", "eval_samples=2", "weight_map_samples=1",
                 "checkpoint_every=2", "log_every=1", "lr=1e-3", "g_lr=1e-2",
                 "keep_epoch_checkpoints=true"]
    return build_config(overrides=overrides + [f"{k}={v}" for k, v in extra.items()])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt(Exception):
    pass


def everything(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every parameter and optimizer tensor of a run, flattened into one dict."""
    out = {}
    for name, module in (("F", trainer.fusion), ("T", trainer.task), ("G", trainer.loss_gen)):
        if module is not None:
            out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    for name, opt in (("optF", trainer.f_opt), ("optT", trainer.t_opt), ("optG", trainer.g_opt)):
        if opt is None:
            continue
        for pid, st in opt.state_dict()["state"].items():
            out.update({f"{name}.{pid}.{k}": torch.as_tensor(v) for k, v in st.items()})
    return out


@pytest.mark.parametrize("g_update", ["maxnorm", "adam"])
def test_resume_matches_uninterrupted_run(tmp_path, g_update):
    cfg = tiny_config(g_update=g_update)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full_history = full.fit()

    broken = Trainer(cfg, tmp_path / "broken", progress=False)
    original = broken._after_step

    def stop_after_third_step(phase):
        original(phase)
        if broken.position.global_step == 3:  # checkpoint at step 2 lies inside the meta phase
            raise Interrupt

    broken._after_step = stop_after_third_step
    with pytest.raises(Interrupt):
        broken.fit()
    saved = load_state(tmp_path / "broken" / "last.pt")
    assert saved["position"] == {"epoch": 0, "phase": "meta", "step": 2, "global_step": 2}

    resumed = Trainer(cfg, tmp_path / "broken", progress=False)
    resumed_history = resumed.fit(resume=tmp_path / "broken" / "last.pt")

    a, b = everything(full), everything(resumed)
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, f"resumed run differs in {mismatched[:5]}"
    # the logged epoch summaries agree too (timings aside)
    strip = lambda h: [{k: v for k, v in e.items() if not k.startswith("sec_")} for e in h]  # noqa: E731
    assert [sorted(e) for e in strip(resumed_history)] == [sorted(e) for e in strip(full_history)]
    for e_full, e_res in zip(strip(full_history), strip(resumed_history)):
        for k in e_full:
            assert e_res[k] == pytest.approx(e_full[k], rel=1e-6, abs=1e-9), k
    # the run wrote what it promises
    for name in ("last.pt", "epoch_001.pt", "epoch_002.pt", "fusion_net.pt", "loss_generator.pt",
                 "config.yaml", "train.log", "weight_maps/epoch_000.png", "weight_maps/epoch_002.png"):
        assert (tmp_path / "full" / name).is_file(), name
    assert list((tmp_path / "full" / "tensorboard").iterdir())


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(epochs=1)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    next_batch = trainer.stream.next
    calls = {"n": 0}

    def poisoned():
        batch = next_batch()
        calls["n"] += 1
        if calls["n"] == 5:  # the inner batch of meta step 3, after the checkpoint of step 2
            batch["crop_ir"] = batch["crop_ir"] * float("nan")
        return batch

    trainer.stream.next = poisoned
    last = tmp_path / "run" / "last.pt"
    digest = {}
    original = trainer._after_step

    def remember(phase):
        original(phase)
        if trainer.position.global_step == 2:
            digest["at_step_2"] = hashlib.sha256(last.read_bytes()).hexdigest()

    trainer._after_step = remember
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    message = str(err.value)
    assert "fusion loss (inner update) is not finite" in message
    assert "epoch 1, meta step 3" in message and str(last) in message
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest["at_step_2"]
    state = load_state(last)
    assert state["position"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["models"]["loss_gen"].values())


def _strip_timings(history):
    return [{k: v for k, v in e.items() if not k.startswith("sec_")} for e in history]


def test_resume_is_exact_from_every_phase_boundary(tmp_path):
    """A checkpoint at each boundary of Algorithm 1 resumes to the uninterrupted run, bit for bit.

    4 training pairs, 1 per batch: a meta step takes 2 batches, so the first pass runs out inside the
    meta phase (step 2), the meta phase ends part-way into the second pass (the resumed loader must not
    carry that pass's position into the fusion phase's new pass), and the epoch ends part-way into a third.
    """
    cfg = tiny_config(epochs=2, meta_steps=3, fusion_steps=3, checkpoint_every=1000,
                      synthetic="{train: 4, val: 2, image_size: [32, 48]}")
    boundaries = {2: "pass ran out mid meta phase", 3: "end of meta phase", 4: "mid fusion phase",
                  6: "end of fusion phase"}
    full = Trainer(cfg, tmp_path / "full", progress=False)
    original = full._after_step

    def keep_checkpoints(phase):
        original(phase)
        if full.position.epoch == 0 and full.position.global_step in boundaries:
            full.save(f"step_{full.position.global_step}.pt")

    full._after_step = keep_checkpoints
    full_history = full.fit()
    reference = everything(full)
    checkpoints = {f"step_{s}.pt": label for s, label in boundaries.items()}
    checkpoints["epoch_001.pt"] = "end of epoch"
    positions = {name: load_state(tmp_path / "full" / name)["position"] for name in checkpoints}
    assert positions["step_3.pt"] == {"epoch": 0, "phase": "meta", "step": 3, "global_step": 3}
    assert positions["step_4.pt"] == {"epoch": 0, "phase": "fusion", "step": 1, "global_step": 4}
    assert positions["epoch_001.pt"] == {"epoch": 1, "phase": "meta", "step": 0, "global_step": 6}

    for name, label in checkpoints.items():
        resumed = Trainer(cfg, tmp_path / name, progress=False)
        history = resumed.fit(resume=tmp_path / "full" / name)
        got = everything(resumed)
        assert got.keys() == reference.keys()
        mismatched = [k for k in reference if not torch.equal(reference[k], got[k])]
        worst = max((float((reference[k].double() - got[k].double()).abs().max()) for k in mismatched), default=0.0)
        assert not mismatched, f"resumed from {label} ({name}): {len(mismatched)} tensors differ, max {worst:.3g}"
        for e_full, e_res in zip(_strip_timings(full_history), _strip_timings(history)):
            assert e_res.keys() == e_full.keys(), label
            for k in e_full:
                assert e_res[k] == pytest.approx(e_full[k], rel=1e-6, abs=1e-9), (label, k)
