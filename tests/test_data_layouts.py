"""Dataset layouts parsed from tiny fixtures: pairing, problem counts, YAML, transforms, swap, resume."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion_edge.data import (LAYOUTS, PairDataset, ResumableSampler, build_dataset, load_dataset_yaml,
                                make_loader, scan_split, spec_from_dict, swap_pairs)
from tdfusion_edge.data.collate import collate_fn
from tdfusion_edge.data.sample import build_sample
from tdfusion_edge.errors import TDFusionError

H, W = 40, 56


def _ir(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _vis(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _voc(path: Path, objects: list[tuple[str, int, int, int, int]], broken: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    text = f"<annotation><size><width>{W}</width><height>{H}</height></size>{objs}</annotation>"
    path.write_text(text[:-20] if broken else text)


def _mask(seed: int, num_classes: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, (H, W), dtype=np.uint8)


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def make_seg(root: Path, ir_t: str, vis_t: str, label_t: str, split: str, n_classes: int) -> None:
    """Five good pairs plus one of each problem: missing partner, corrupt image, bad mask, empty mask, size mismatch."""
    d = lambda t: root / t.replace("{split}", split)  # noqa: E731
    for i in range(5):
        _write(d(ir_t) / f"{i:05d}.png", _ir(i))
        _write(d(vis_t) / f"{i:05d}.png", _vis(i))
        _write(d(label_t) / f"{i:05d}.png", _mask(i, n_classes))
    _write(d(ir_t) / "lonely.png", _ir(9))                      # missing partner
    _corrupt(d(ir_t) / "corrupt.png")                           # unreadable
    _write(d(vis_t) / "corrupt.png", _vis(9))
    _write(d(label_t) / "corrupt.png", _mask(9, n_classes))
    for stem, mask in (("badmask", np.full((H, W), 77, np.uint8)), ("emptymask", np.full((H, W), 255, np.uint8))):
        _write(d(ir_t) / f"{stem}.png", _ir(7))
        _write(d(vis_t) / f"{stem}.png", _vis(7))
        _write(d(label_t) / f"{stem}.png", mask)
    _write(d(ir_t) / "mismatch.png", _ir(8))                    # size mismatch
    _write(d(vis_t) / "mismatch.png", _vis(8, H + 2, W))
    _write(d(label_t) / "mismatch.png", _mask(8, n_classes))


def make_det(root: Path, ir_dir: Path, vis_dir: Path, ann_dir: Path, names: tuple[str, ...], ext: str) -> None:
    """Four good pairs plus: missing partner, corrupt image, empty annotation, broken xml, size mismatch."""
    for i in range(4):
        _write(ir_dir / f"{i:05d}{ext}", _ir(i))
        _write(vis_dir / f"{i:05d}{ext}", _vis(i))
        _voc(ann_dir / f"{i:05d}.xml", [(names[i % len(names)], 4, 5, 30, 33), ("unknown_thing", 1, 1, 9, 9)])
    _write(vis_dir / f"lonely{ext}", _vis(5))
    _corrupt(ir_dir / f"corrupt{ext}")
    _write(vis_dir / f"corrupt{ext}", _vis(6))
    _voc(ann_dir / "corrupt.xml", [(names[0], 1, 1, 20, 20)])
    _write(ir_dir / f"empty{ext}", _ir(7))
    _write(vis_dir / f"empty{ext}", _vis(7))
    _voc(ann_dir / "empty.xml", [])
    _write(ir_dir / f"broken{ext}", _ir(8))
    _write(vis_dir / f"broken{ext}", _vis(8))
    _voc(ann_dir / "broken.xml", [(names[0], 1, 1, 20, 20)], broken=True)
    _write(ir_dir / f"mismatch{ext}", _ir(9, H, W + 4))
    _write(vis_dir / f"mismatch{ext}", _vis(9))
    _voc(ann_dir / "mismatch.xml", [(names[0], 1, 1, 20, 20)])


@pytest.mark.parametrize("layout", ["msrs", "fmb"])
def test_segmentation_layouts(tmp_path, layout):
    lay = LAYOUTS[layout]
    make_seg(tmp_path, lay.ir, lay.vis, lay.label, "train", len(lay.names))
    spec = spec_from_dict({"path": str(tmp_path), "layout": layout, "train": "train"})
    records, report = scan_split(spec, "train")
    assert [r.name for r in records] == [f"{i:05d}" for i in range(5)]
    c = report.counts
    assert (c["missing_partner"], c["unreadable_image"], c["invalid_label"], c["empty_label"], c["size_mismatch"]) \
        == (1, 1, 1, 1, 1)
    assert report.found == 10 and report.usable == 5 and "5 usable of 10" in report.summary()
    ds = PairDataset(records, task="seg", names=spec.names, task_size=(20, 28), crop_size=32, report=report)
    s = ds[0]
    assert s["ir"].shape == s["vis"].shape == (1, 20, 28) and s["mask"].shape == (20, 28)
    assert s["mask"].dtype == torch.int64 and s["crop_ir"].shape == (1, 32, 32)
    assert 0 <= float(s["ir"].min()) and float(s["vis"].max()) <= 1


def test_msrs_values_are_opencv_luminance(tmp_path):
    make_seg(tmp_path, "{split}/ir", "{split}/vi", "{split}/Segmentation_labels", "test", 9)
    spec = spec_from_dict({"path": str(tmp_path), "layout": "msrs", "val": "test"})
    ds = build_dataset(spec, "val", task_size=None)
    s = ds[0]
    y = cv2.cvtColor(_vis(0), cv2.COLOR_BGR2YCrCb)[:, :, 0]
    np.testing.assert_allclose(s["vis"][0].numpy(), y / 255.0, atol=1e-6)
    np.testing.assert_allclose(s["ir"][0].numpy(), _ir(0) / 255.0, atol=1e-6)
    assert "crop_ir" not in s  # evaluation split: the task view only


@pytest.mark.parametrize("layout,ext", [("m3fd", ".png"), ("llvip", ".jpg")])
def test_detection_layouts(tmp_path, layout, ext):
    lay = LAYOUTS[layout]
    names = lay.names
    make_det(tmp_path, tmp_path / lay.ir.replace("{split}", "train"), tmp_path / lay.vis.replace("{split}", "train"),
             tmp_path / lay.label, names, ext)
    spec = spec_from_dict({"path": str(tmp_path), "layout": layout, "train": "train"})
    ds = build_dataset(spec, "train", task_size=(20, 28), crop_size=32)
    rep = ds.report
    assert len(ds) == 4
    c = rep.counts
    assert (c["missing_partner"], c["unreadable_image"], c["empty_label"], c["invalid_label"], c["size_mismatch"]) \
        == (1, 1, 1, 1, 1)
    assert rep.dropped_objects == 4  # the unknown class in each good file
    s = ds[1]
    cls = 1 % len(names)
    np.testing.assert_allclose(s["boxes"].numpy(), [[cls, 4 * 28 / W, 5 * 20 / H, 30 * 28 / W, 33 * 20 / H]], rtol=1e-5)


def test_paired_layouts_with_masks_and_yolo_labels(tmp_path):
    seg_root, det_root = tmp_path / "seg", tmp_path / "det"
    make_seg(seg_root, "{split}/ir", "{split}/vis", "{split}/masks", "train", 3)
    spec = spec_from_dict({"path": str(seg_root), "layout": "paired", "task": "seg", "train": "train",
                           "names": ["bg", "a", "b"]})
    assert len(build_dataset(spec, "train")) == 5

    # det without split folders: ir/, vis/, labels/ at the root
    for i in range(3):
        _write(det_root / "ir" / f"p{i}.png", _ir(i))
        _write(det_root / "vis" / f"p{i}.jpg", _vis(i))
    (det_root / "labels").mkdir()
    (det_root / "labels" / "p0.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.25 0.25 0.1 0.1\n")
    (det_root / "labels" / "p1.txt").write_text("")                 # empty
    (det_root / "labels" / "p2.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class out of range
    spec = spec_from_dict({"path": str(det_root), "layout": "paired", "task": "det", "train": "train",
                           "names": {0: "person", 1: "car"}})
    ds = build_dataset(spec, "train", task_size=None)
    assert len(ds) == 1 and ds.report.counts["empty_label"] == 1 and ds.report.counts["invalid_label"] == 1
    boxes = ds[0]["boxes"].numpy()
    np.testing.assert_allclose(boxes[0], [1, 0.375 * W, 0.25 * H, 0.625 * W, 0.75 * H], rtol=1e-5)

    keep = spec_from_dict({"path": str(det_root), "layout": "paired", "task": "det", "train": "train",
                           "names": ["person", "car"], "keep_empty": True})
    assert len(build_dataset(keep, "train")) == 2


def test_yaml_loading_and_overrides(tmp_path):
    make_seg(tmp_path / "data", "{split}/IR", "{split}/VIS", "{split}/GT", "trn", 9)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "few.txt").write_text("00001\n00003.png\nnot_there\n")
    cfg = tmp_path / "ds.yaml"
    cfg.write_text("path: data\nlayout: msrs\ntrain: trn\nval: {split: trn, list: ../lists/few.txt}\n"
                   "test: [{split: trn, fraction: [0, 0.5], seed: 3}, {split: trn, fraction: [0.5, 1], seed: 3}]\n"
                   "folders: {ir: '{split}/IR', vis: '{split}/VIS', label: '{split}/GT'}\n"
                   "task_size: [16, 24]\ncrop_size: 8\nnames: {0: a, 1: b, 2: c, 3: d, 4: e, 5: f, 6: g, 7: h, 8: i}\n")
    spec = load_dataset_yaml(cfg)
    assert spec.root == tmp_path / "data" and spec.task == "seg" and spec.num_classes == 9
    assert spec.task_size == (16, 24) and spec.crop_size == 8 and spec.names[8] == "i"
    assert len(build_dataset(spec, "train")) == 5
    val = build_dataset(spec, "val")
    assert [r.name for r in val.records] == ["00001", "00003"] and val.report.counts["missing_partner"] == 1
    halves = [r.name for r in build_dataset(spec, "test").records]
    assert sorted(halves) == [f"{i:05d}" for i in range(5)]  # disjoint slices of one shuffle cover the split
    assert load_dataset_yaml("msrs.yaml").layout == "msrs"  # packaged example configs
    for n in ("fmb", "m3fd", "llvip", "synthetic"):
        assert load_dataset_yaml(f"{n}.yaml").layout == n
    with pytest.raises(TDFusionError, match="no split"):
        build_dataset(spec, "nope")
    bad = tmp_path / "bad.yaml"
    for text, msg in (("layout: nope\n", "unknown dataset layout"), ("layout: msrs\ntask: cls\n", "task"),
                      ("layout: paired\ntrain: [1, 2]\n", "split name"), ("a: [\n", "invalid YAML")):
        bad.write_text(text)
        with pytest.raises(TDFusionError, match=msg):
            load_dataset_yaml(bad)
    with pytest.raises(TDFusionError, match="no image folders"):
        build_dataset(spec_from_dict({"path": str(tmp_path / "void"), "layout": "msrs", "train": "train"}), "train")


def test_transforms_keep_boxes_and_masks_consistent():
    h, w = 60, 100
    ir = np.full((h, w), 20, np.uint8)
    vis = np.full((h, w, 3), 30, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = 30, 12, 70, 42
    ir[y1:y2, x1:x2] = 220
    mask[y1:y2, x1:x2] = 2
    boxes = np.array([[1, x1, y1, x2, y2]], np.float32)
    for size in ((30, 50), (90, 150), (48, 64)):
        s = build_sample(ir, vis, name="t", index=0, task_size=size, crop_size=32,
                         rng=np.random.default_rng(0), mask=mask, boxes=boxes)
        ys, xs = np.nonzero(s["mask"].numpy() == 2)
        b = s["boxes"][0].numpy()
        assert b[0] == 1
        assert abs(xs.min() - b[1]) <= 1 and abs(xs.max() + 1 - b[3]) <= 1
        assert abs(ys.min() - b[2]) <= 1 and abs(ys.max() + 1 - b[4]) <= 1
        bright = s["ir"][0].numpy() > 0.5
        assert (bright == (s["mask"].numpy() == 2)).mean() > 0.97
        assert set(np.unique(s["mask"].numpy())) <= {0, 2}  # nearest: no invented classes
    # crops: window of the full-resolution planes, reflect-padded when the image is smaller
    small = build_sample(ir[:20, :24], vis[:20, :24], name="s", index=0, task_size=None, crop_size=32,
                         rng=np.random.default_rng(1))
    assert small["crop_ir"].shape == (1, 32, 32)
    np.testing.assert_allclose(small["crop_ir"][0, :20, :24].numpy(), ir[:20, :24] / 255, atol=1e-6)


def test_swap_pairs_doubles_the_batch():
    gen = np.random.default_rng(0)
    samples = []
    for i in range(2):
        boxes = np.array([[i, 2, 3, 20, 30]], np.float32)
        samples.append(build_sample(gen.integers(0, 255, (40, 48), dtype=np.uint8),
                                    gen.integers(0, 255, (40, 48, 3), dtype=np.uint8), name=f"n{i}", index=i,
                                    task_size=(32, 48), crop_size=16, rng=gen, boxes=boxes, with_chroma=True))
    batch = collate_fn(samples)
    dt = batch["det_targets"]
    assert dt["bboxes"].shape == (2, 4) and dt["cls"].shape == (2, 1)
    np.testing.assert_allclose(dt["bboxes"][0].numpy(), [11 / 48, 16.5 * 32 / 40 / 32, 18 / 48, 27 * 0.8 / 32],
                               rtol=1e-5)
    sw = swap_pairs(batch)
    assert sw["ir"].shape[0] == 4 and sw["crop_vis"].shape[0] == 4 and sw["vis_crcb"].shape[0] == 4
    assert torch.equal(sw["ir"][2:], batch["vis"]) and torch.equal(sw["vis"][2:], batch["ir"])
    assert torch.equal(sw["crop_ir"][:2], batch["crop_ir"]) and torch.equal(sw["crop_ir"][2:], batch["crop_vis"])
    assert sw["det_targets"]["batch_idx"].tolist() == [0, 1, 2, 3]
    assert sw["name"] == ["n0", "n1", "n0", "n1"] and sw["swapped"].tolist() == [False, False, True, True]
    assert len(sw["boxes"]) == 4


def _seg_dataset(tmp_path: Path, n: int = 7) -> PairDataset:
    for i in range(n):
        _write(tmp_path / "train" / "ir" / f"{i:03d}.png", _ir(i))
        _write(tmp_path / "train" / "vis" / f"{i:03d}.png", _vis(i))
        _write(tmp_path / "train" / "masks" / f"{i:03d}.png", _mask(i, 3))
    spec = spec_from_dict({"path": str(tmp_path), "layout": "paired", "task": "seg", "train": "train",
                           "names": ["a", "b", "c"], "crop_size": 24, "task_size": [20, 28]})
    return build_dataset(spec, "train")


def test_loader_resumes_exactly(tmp_path):
    ds = _seg_dataset(tmp_path)
    full = make_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=5)
    full.set_epoch(3)
    ref = list(full)
    assert sum(len(b["name"]) for b in ref) == 7

    first = make_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=5)
    first.set_epoch(3)
    it = iter(first)
    got = [next(it), next(it)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["consumed"] == 4

    resumed = make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=5)
    resumed.load_state_dict(state)
    got += list(resumed)
    assert [b["name"] for b in got] == [b["name"] for b in ref]
    for a, b in zip(got, ref):
        assert torch.equal(a["crop_ir"], b["crop_ir"]) and torch.equal(a["mask"], b["mask"])
    # the pass after a finished one is a new epoch with a new order
    assert resumed.state_dict()["epoch"] == 3
    nxt = list(resumed)
    assert resumed.state_dict()["epoch"] == 4 and [b["name"] for b in nxt] != [b["name"] for b in ref]


def test_sampler_distributed_semantics():
    parts = [list(ResumableSampler(11, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    assert {k[0] for p in parts for k in p} == set(range(11))
    s = ResumableSampler(11, shuffle=True, seed=1, rank=0, world_size=3)
    s.set_epoch(0)
    e0 = [k[0] for k in s]
    s.set_epoch(1)
    e1 = [k[0] for k in s]
    assert e0 == [k[0] for k in parts[0]] and e0 != e1
    wrapped = ResumableSampler(5, base=torch.utils.data.SequentialSampler(range(5)))
    wrapped.load_state_dict({"epoch": 2, "consumed": 3})
    assert [k[:2] for k in wrapped] == [(3, 2), (4, 2)]


def test_file_unreadable_at_load_time_is_skipped_and_counted(tmp_path):
    ds = _seg_dataset(tmp_path, n=5)
    assert ds.report.ok
    _corrupt(tmp_path / "train" / "vis" / "002.png")
    loader = make_loader(ds, batch_size=2, shuffle=False, num_workers=0)
    names = [n for b in loader for n in b["name"]]
    assert "002" not in names and len(names) == 5
    assert ds.report.counts["skipped_at_load"] == 1 and "skipped at load 1" in ds.report.summary()


def test_detection_layout_with_yolo_labels_and_yaml_loader(tmp_path):
    # LLVIP images with YOLO txt labels instead of the VOC xml: a folders override in the YAML
    for i in range(3):
        _write(tmp_path / "infrared" / "test" / f"{i:06d}.jpg", _ir(i))
        _write(tmp_path / "visible" / "test" / f"{i:06d}.jpg", _vis(i))
        (tmp_path / "yolo").mkdir(exist_ok=True)
        (tmp_path / "yolo" / f"{i:06d}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    cfg = tmp_path / "llvip_yolo.yaml"
    cfg.write_text("path: .\nlayout: llvip\nval: test\nfolders: {label: yolo, label_kind: yolo}\n")
    loader = make_loader(cfg, "val", batch_size=3, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["ir"].shape == (3, 1, 256, 320) and "crop_ir" not in batch
    np.testing.assert_allclose(batch["boxes"][0].numpy(), [[0, 80, 64, 240, 192]], rtol=1e-5)
    np.testing.assert_allclose(batch["det_targets"]["bboxes"][0].numpy(), [0.5, 0.5, 0.5, 0.5], rtol=1e-5)


def test_truncated_image_full_verification(tmp_path):
    _seg_dataset(tmp_path, n=4)
    path = tmp_path / "train" / "ir" / "001.png"
    path.write_bytes(path.read_bytes()[:60])  # header intact, pixel data cut
    cfg = {"path": str(tmp_path), "layout": "paired", "task": "seg", "train": "train", "names": ["a", "b", "c"]}
    assert len(build_dataset(spec_from_dict(cfg), "train")) == 4  # a header read cannot see it...
    full = build_dataset(spec_from_dict({**cfg, "verify": "full"}), "train")
    assert len(full) == 3 and full.report.counts["unreadable_image"] == 1  # ...a full decode can


def test_paired_folder_without_labels_is_fusion_only(roadscene):
    spec = spec_from_dict({"path": str(roadscene), "layout": "paired", "task": "seg", "train": "train"})
    ds = build_dataset(spec, "train")  # no split folder, no masks/, visible folder spelled vi/
    assert len(ds) == 50 and not ds.labelled and ds.report.ok
    batch = next(iter(make_loader(ds, batch_size=2, num_workers=0)))
    assert batch["ir"].shape == (2, 1, 256, 320) and batch["crop_vis"].shape == (2, 1, 256, 256)
    assert "mask" not in batch and "det_targets" not in batch
