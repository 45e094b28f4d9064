"""The weights shipped in the package load and fuse like a fusion network, not like noise."""
import numpy as np
import torch

from tdfusion_edge.checkpoints import default_weights_path, load_model
from tdfusion_edge.data.synthetic import make_scene
from tdfusion_edge.imaging import luma_and_chroma, to_uint8
from tdfusion_edge.inference import postprocess
from tdfusion_edge.metrics import compute_metrics


def test_default_weights_ship_with_provenance():
    model, info = load_model(default_weights_path())
    assert info["format"] == "tdfusion-edge"
    assert info["provenance"]["trainer"] == "tdfusion_edge.fusion_pretrain"


def test_default_weights_keep_ir_targets_and_visible_detail():
    model, _ = load_model(default_weights_path())
    scores = []
    for seed, condition in ((11, "night"), (13, "day")):
        scene = make_scene(seed, 96, 128, condition)
        ir = scene.ir.astype(np.float32) / 255
        vis = luma_and_chroma(scene.vis)[0]
        with torch.no_grad():
            y = model(torch.from_numpy(ir)[None, None], torch.from_numpy(vis)[None, None])[0, 0].numpy()
        fused = to_uint8(postprocess(y)).astype(np.float32)
        m = compute_metrics(fused, scene.ir.astype(np.float32), np.round(vis * 255).astype(np.float32),
                            metrics=["Qabf", "CC", "SSIM"])
        scores.append(m)
        if condition == "night":
            # Warm people and cars hidden in the dark visible frame must stand out in the fused one.
            inside, outside = fused[scene.ir_only].mean(), fused[~scene.ir_only & (scene.mask == 0)].mean()
            assert inside > outside + 40
        else:
            # Cold parked cars exist only in the visible frame: their texture must survive.
            assert scene.vis_only.sum() > 100
            assert fused[scene.vis_only].std() > 0.5 * vis[scene.vis_only].std() * 255
    for m in scores:
        assert m["Qabf"] > 0.4 and m["CC"] > 0.4 and m["SSIM"] > 0.4, m
