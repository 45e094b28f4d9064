"""Task networks: the loss is a differentiable scalar, works under functional_call with updated
parameters, predictions have the documented shapes, and evaluation scores perfect vs wrong answers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.func import functional_call

from tdfusion_edge.data.collate import det_targets
from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.tasks import build_task, to_task_input

SIZE = 64


@pytest.fixture(scope="module")
def seg_net():
    torch.manual_seed(0)
    return build_task("seg", 3, names=("bg", "person", "car"))


@pytest.fixture(scope="module")
def det_net():
    torch.manual_seed(0)
    return build_task("det", 2, names=("person", "car"))


def _images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_task_input(torch.rand(2, 1, SIZE, SIZE, generator=g))


def _mask() -> torch.Tensor:
    m = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    m[0, 10:30, 5:40] = 1
    m[1, 30:60, 20:50] = 2
    m[1, :4] = 255  # ignored
    return m


def _boxes() -> list[torch.Tensor]:
    return [torch.tensor([[0, 6.0, 8.0, 30.0, 50.0], [1, 34.0, 20.0, 62.0, 44.0]]),
            torch.tensor([[1, 10.0, 12.0, 40.0, 36.0]])]


def _targets(task: str):
    return _mask() if task == "seg" else det_targets(_boxes(), SIZE, SIZE)


def _loss(net, params, buffers, images, targets):
    torch.manual_seed(123)  # SegFormer has dropout / drop-path in train mode: same draws for both calls
    return functional_call(net, (params, buffers), (images, targets))


@pytest.mark.parametrize("task", ["seg", "det"])
def test_loss_is_a_finite_scalar_with_gradients(task, seg_net, det_net):
    net = seg_net if task == "seg" else det_net
    net.train()
    net.zero_grad(set_to_none=True)
    loss = net(_images(), _targets(task))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(p.requires_grad for p in net.parameters())
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    # the whole batch dict is accepted as targets too
    batch = {"mask": _mask()} if task == "seg" else {"det_targets": _targets(task)}
    torch.manual_seed(1)
    a = net(_images(), batch)
    torch.manual_seed(1)
    b = net(_images(), _targets(task))
    assert torch.allclose(a, b)


@pytest.mark.parametrize("task", ["seg", "det"])
def test_functional_call_with_one_step_updated_params(task, seg_net, det_net):
    net = seg_net if task == "seg" else det_net
    net.train()
    targets = _targets(task)
    params = dict(net.named_parameters())
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    own = {k: v.clone() for k, v in net.named_buffers()}
    loss0 = _loss(net, params, buffers, _images(), targets)
    grads = torch.autograd.grad(loss0, list(params.values()), allow_unused=True)
    updated = {k: p - 0.05 * g if g is not None else p for (k, p), g in zip(params.items(), grads)}

    images = _images(1).requires_grad_(True)
    before = _loss(net, params, buffers, images, targets)
    after = _loss(net, updated, buffers, images, targets)
    assert torch.isfinite(after) and abs(after.item() - before.item()) > 1e-6
    # differentiable w.r.t. the images, and that gradient is itself differentiable (second order); the
    # gradient also reaches the parameters θ the update started from (the path of a meta-gradient)
    first = next(k for k, g in zip(params, grads) if g is not None)
    g_img, g_first = torch.autograd.grad(after, [images, params[first]], create_graph=True)
    assert g_img.shape == images.shape and g_img.requires_grad and float(g_img.detach().abs().sum()) > 0
    assert float(g_first.detach().abs().sum()) > 0
    gg, = torch.autograd.grad(g_img.pow(2).sum(), images)
    assert torch.isfinite(gg).all()
    # running statistics went to the cloned buffers, the module's own are untouched
    for k, v in net.named_buffers():
        assert torch.equal(v, own[k]), k


def test_segformer_predict_and_evaluate(seg_net):
    pred = seg_net.predict(_images())
    assert pred.shape == (2, SIZE, SIZE) and pred.dtype == torch.int64 and seg_net.training
    mask = _mask()
    perfect = seg_net.evaluate(mask.clamp(max=2), mask)
    assert perfect["mIoU"] == pytest.approx(1.0) and perfect["mAcc"] == pytest.approx(1.0)
    wrong = seg_net.evaluate((mask.clamp(max=2) + 1) % 3, mask)
    assert wrong["mIoU"] < 0.01 and wrong["mAcc"] < 0.01
    half = seg_net.evaluate([mask.clamp(max=2), torch.zeros_like(mask)], [mask, mask])  # lists of batches
    assert 0 < half["mIoU"] < 1 and half["confusion"].sum() == 2 * int((mask != 255).sum())
    assert seg_net.evaluate(pred, mask)["mIoU"] <= 1


def test_yolo_predict_and_evaluate(det_net):
    preds = det_net.predict(_images())
    assert len(preds) == 2 and all(p.ndim == 2 and p.shape[1] == 6 for p in preds) and det_net.training
    odd = det_net.predict(to_task_input(torch.rand(1, 1, 40, 72)))  # not a multiple of the stride
    assert odd[0].shape[1] == 6 and (odd[0][:, 2] <= 72).all() and (odd[0][:, 3] <= 40).all()

    boxes = _boxes()
    perfect = [torch.cat((b[:, 1:], torch.ones(len(b), 1), b[:, :1]), 1) for b in boxes]
    res = det_net.evaluate(perfect, boxes)
    # ultralytics' 101-point interpolated AP of a perfect detector is 0.995
    assert res["mAP50"] > 0.99 and res["mAP75"] > 0.99
    assert det_net.evaluate(perfect, det_targets(boxes, SIZE, SIZE))["mAP50"] == pytest.approx(res["mAP50"])
    shifted = [p.clone() for p in perfect]
    for p in shifted:
        p[:, [0, 2]] += 0.3 * (p[:, 2:3] - p[:, 0:1])  # IoU ≈ 0.54: right at 0.5, wrong at 0.75
    mid = det_net.evaluate(shifted, boxes)
    assert mid["mAP50"] > 0.99 and mid["mAP75"] < 0.01
    wrong_cls = [torch.cat((p[:, :5], 1 - p[:, 5:]), 1) for p in perfect]
    assert det_net.evaluate(wrong_cls, boxes)["mAP50"] < 0.5


def test_to_task_input_gray_and_colour():
    y = torch.rand(2, 1, 8, 8)
    x = to_task_input(y)
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    bgr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32) / 255
    rgb = to_task_input(torch.from_numpy(ycrcb[:, :, :1]).permute(2, 0, 1)[None],
                        torch.from_numpy(ycrcb[:, :, 1:]).permute(2, 0, 1)[None])
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    assert np.abs(rgb[0].permute(1, 2, 0).numpy() - ref).max() < 3 / 255


def test_weights_errors_and_local_checkpoints(tmp_path, seg_net):
    with pytest.raises(TDFusionError, match="not found"):
        build_task("det", 2, str(tmp_path / "missing.pt"))
    with pytest.raises(TDFusionError, match="not found"):
        build_task("seg", 2, str(tmp_path / "missing_dir"))
    with pytest.raises(TDFusionError, match="unknown task"):
        build_task("cls", 2)
    seg_net.model.save_pretrained(tmp_path / "segformer")
    loaded = build_task("seg", 5, str(tmp_path / "segformer"))  # other class count: head re-initialised
    assert loaded.num_classes == 5 and loaded.normalize
    enc = "segformer.encoder.patch_embeddings.0.proj.weight"
    src = dict(seg_net.model.named_parameters())
    dst = dict(loaded.model.named_parameters())
    key = enc if enc in src else next(k for k in src if "patch_embeddings" in k and k.endswith("weight"))
    assert torch.equal(src[key], dst[key])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", ["seg", "det"])
def test_task_on_cuda_second_order(task):
    net = build_task(task, 3).cuda().train()
    targets = _mask().clamp(max=2) if task == "seg" else det_targets(_boxes(), SIZE, SIZE)
    images = _images().cuda().requires_grad_(True)
    params = dict(net.named_parameters())
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    loss = functional_call(net, (params, buffers), (images, targets))  # CPU targets are moved by the task
    g, = torch.autograd.grad(loss, images, create_graph=True)
    gg, = torch.autograd.grad(g.pow(2).sum(), images)
    assert torch.isfinite(loss) and torch.isfinite(gg).all()
    preds = net.predict(images.detach())
    assert (preds.shape == (2, SIZE, SIZE)) if task == "seg" else len(preds) == 2


def test_enet_class_weights_follow_the_labelled_shares():
    from tdfusion_edge.tasks.class_weights import enet_class_weights

    mask = torch.zeros(1, 10, 10, dtype=torch.long)
    mask[0, :2] = 1      # 20 of 90 labelled pixels
    mask[0, 9] = 255     # ignored row
    w = enet_class_weights(mask, 3)
    shares = torch.tensor([70 / 90, 20 / 90, 0.0])
    assert torch.allclose(w, 1 / torch.log(1.02 + shares))
    assert w[2] == w.max() and w[0] == w.min()  # the rarer the class, the larger its weight


def test_segformer_class_weighted_loss(seg_net):
    seg_net.eval()  # no dropout: the three losses see the same logits
    images, mask = _images(), _mask()
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(seg_net.logits(images), size=mask.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        plain = seg_net(images, mask)
        seg_net.class_weights = "enet"
        enet = seg_net(images, mask)
        seg_net.class_weights = (1.0, 5.0, 2.0)
        fixed = seg_net(images, mask)
        seg_net.class_weights = None
    from tdfusion_edge.tasks.class_weights import enet_class_weights

    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(plain, ce(logits, mask, ignore_index=255))
    assert torch.allclose(enet, ce(logits, mask, weight=enet_class_weights(mask, 3), ignore_index=255))
    assert torch.allclose(fixed, ce(logits, mask, weight=torch.tensor([1.0, 5.0, 2.0]), ignore_index=255))
    assert not torch.allclose(plain, enet) and not torch.allclose(enet, fixed)
    seg_net.train()


def test_class_weight_settings_are_checked():
    from tdfusion_edge.tasks.class_weights import check_class_weights
    from tdfusion_edge.train.config import ConfigError, build_config

    assert check_class_weights("none", 3) is None and check_class_weights("enet", 3) == "enet"
    assert check_class_weights([1, 2, 3], 3) == (1.0, 2.0, 3.0)
    for bad in ("balanced", [1, 2], [1, 0, 2]):
        with pytest.raises(TDFusionError, match="class_weights"):
            check_class_weights(bad, 3)
    assert build_config(overrides=["class_weights=enet"]).class_weights == "enet"
    with pytest.raises(ConfigError, match="segmentation task only"):
        build_config(overrides=["task=det", "class_weights=enet"])
    with pytest.raises(ConfigError, match="class_weights must be"):
        build_config(overrides=["class_weights=7"])
