"""SyntheticPairs: deterministic by index, modality-specific objects really are modality-specific."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tdfusion_edge.data import SyntheticPairs, build_dataset, make_loader, spec_from_dict, swap_pairs
from tdfusion_edge.data.synthetic import make_scene
from tdfusion_edge.errors import TDFusionError


def _contrast(img: np.ndarray, region: np.ndarray, background: np.ndarray) -> float:
    """|mean inside region − mean of a thin background ring around it|."""
    ring = (cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0) & ~region & background
    return abs(float(img[region].mean()) - float(img[ring].mean()))


def test_deterministic_by_index():
    a = SyntheticPairs(6, "seg", 48, 64, base_seed=11, crop_size=32)
    b = SyntheticPairs(6, "seg", 48, 64, base_seed=11, crop_size=32)
    for i in (0, 5):
        sa, sb = a[i], b[(i, 0, 0)]
        for k in ("ir", "vis", "crop_ir", "crop_vis", "mask"):
            assert torch.equal(sa[k], sb[k]), k
    assert not torch.equal(a[0]["ir"], a[1]["ir"])
    # scene i is make_scene(base_seed + i)
    np.testing.assert_allclose(a[2]["ir"][0].numpy(), make_scene(13, 48, 64).ir / 255, atol=1e-6)
    # a new epoch draws new crops of the same scene
    e0, e1 = a[(3, 0, 7)], a[(3, 1, 7)]
    assert torch.equal(e0["ir"], e1["ir"])


@pytest.mark.parametrize("condition", ["night", "day"])
def test_single_modality_objects(condition):
    ds = SyntheticPairs(10, "seg", 96, 128, base_seed=100, condition=condition, views=("task",),
                        with_modal_masks=True)
    key = "ir_only" if condition == "night" else "vis_only"
    ir_cs, vis_cs = [], []
    for i in range(len(ds)):
        s = ds[i]
        region, bg = s[key].numpy(), s["mask"].numpy() == 0
        assert not s["vis_only" if key == "ir_only" else "ir_only"].numpy().any()
        assert not (region & bg).any()  # only object pixels
        if region.sum() < 20:
            continue
        ir_cs.append(_contrast(s["ir"][0].numpy() * 255, region, bg))
        if condition == "night":
            vis_cs.append(_contrast(s["vis"][0].numpy() * 255, region, bg))  # the luminance the fusion sees
            assert ir_cs[-1] > 40 and vis_cs[-1] < 12, (i, ir_cs[-1], vis_cs[-1])  # warm objects hidden in the dark
        else:
            bgr = ds.scene(i).vis.astype(np.float32)  # colour contrast: a cold car may share the road's gray level
            vis_cs.append(max(_contrast(bgr[:, :, c], region, bg) for c in range(3)))
            assert ir_cs[-1] < 25, (i, ir_cs[-1])  # cold painted objects sit at ambient temperature
    assert len(ir_cs) >= 3
    if condition == "day":
        assert np.mean(vis_cs) > 2 * np.mean(ir_cs)


def test_boxes_match_masks():
    for seed in range(6):
        scene = make_scene(seed, 72, 96)
        for cls, x1, y1, x2, y2 in scene.boxes:
            inside = scene.mask[int(y1):int(y2), int(x1):int(x2)]
            assert (inside == int(cls) + 1).any()
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 72


@pytest.mark.parametrize("task", ["seg", "det"])
def test_synthetic_spec_and_loader(task):
    spec = spec_from_dict({"layout": "synthetic", "task": task, "train": 6, "val": 3, "image_size": [48, 64],
                           "task_size": [32, 64], "crop_size": 32, "seed": 4})
    train, val = build_dataset(spec, "train"), build_dataset(spec, "val")
    assert len(train) == 6 and len(val) == 3 and train.names == spec.names
    assert not torch.equal(train[0]["ir"], val[0]["ir"])  # splits use disjoint seeds
    batch = next(iter(make_loader(train, batch_size=2, num_workers=0)))
    assert batch["crop_ir"].shape == (2, 1, 32, 32) and batch["ir"].shape == (2, 1, 32, 64)
    if task == "seg":
        assert batch["mask"].shape == (2, 32, 64) and int(batch["mask"].max()) <= 2
    else:
        dt = batch["det_targets"]
        assert dt["bboxes"].shape[1] == 4 and float(dt["bboxes"].max()) <= 1
        assert swap_pairs(batch)["det_targets"]["batch_idx"].max() >= 2
    assert "crop_ir" not in val[0]


def test_object_count_option_changes_scenes_and_is_validated():
    default = make_scene(3, 72, 96)
    same = make_scene(3, 72, 96, objects=(2, 5))  # the default range draws the same scene
    assert np.array_equal(default.mask, same.mask) and np.array_equal(default.ir, same.ir)
    empty = make_scene(3, 72, 96, objects=(0, 0))
    assert len(empty.boxes) == 0 and not empty.mask.any()
    crowded = [len(make_scene(s, 72, 96, objects=(8, 8)).boxes) for s in range(4)]
    sparse = [len(make_scene(s, 72, 96, objects=(1, 1)).boxes) for s in range(4)]
    assert min(crowded) > max(sparse) == 1
    with pytest.raises(ValueError, match="objects must be"):
        make_scene(0, 72, 96, objects=(3, 1))
    spec = spec_from_dict({"layout": "synthetic", "train": 2, "image_size": [48, 64], "objects": [6, 6]})
    assert spec.synthetic["objects"] == (6, 6)
    assert len(build_dataset(spec, "train").scene(0).boxes) > 2
    with pytest.raises(TDFusionError, match="objects must be"):
        spec_from_dict({"layout": "synthetic", "train": 2, "objects": [4]})
