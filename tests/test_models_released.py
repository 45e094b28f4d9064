"""FusionNet with the released weights equals an independent op-by-op oracle of the released network."""
import torch

from oracle_refusion import oracle_forward
from tdfusion_edge.checkpoints import load_fusion_net, read_torch_file


def test_released_weights_match_oracle(released_weights, roadscene):
    from tdfusion_edge.imaging import load_pair, scan_pairs

    model = load_fusion_net(released_weights)
    sd = read_torch_file(released_weights)
    stem, ir_path, vis_path = scan_pairs(roadscene / "ir", roadscene / "vi").pairs[0]
    pair = load_pair(ir_path, vis_path)
    ir = torch.from_numpy(pair.ir_y)[None, None]
    vis = torch.from_numpy(pair.vis_y)[None, None]
    with torch.no_grad():
        ours = model(ir, vis)
        oracle = oracle_forward(sd, torch.cat([ir, vis], 1))
    diff = (ours - oracle).abs().max().item()
    print(f"max abs diff vs oracle on {stem} {tuple(ir.shape[-2:])}: {diff:.3g}")
    assert ours.shape == oracle.shape
    assert diff <= 1e-5


def test_released_weights_match_oracle_random_input(released_weights):
    torch.manual_seed(0)
    model = load_fusion_net(released_weights)
    sd = read_torch_file(released_weights)
    x = torch.rand(2, 2, 37, 53)
    with torch.no_grad():
        diff = (model(x[:, :1], x[:, 1:]) - oracle_forward(sd, x)).abs().max().item()
    assert diff <= 1e-5


def test_output_changes_with_input(released_weights):
    # Guards against an oracle/model pair that agree because both ignore their input.
    model = load_fusion_net(released_weights)
    a = torch.rand(1, 1, 24, 24)
    b = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        assert (model(a, b) - model(b, a)).abs().max() > 1e-3
