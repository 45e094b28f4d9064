"""Model construction, shapes and the properties the method relies on."""
import pytest
import torch

from tdfusion_edge.models import FusionNet, FusionNetConfig, LossGenerator, LossGeneratorConfig


def test_default_sizes_match_the_released_networks():
    assert sum(p.numel() for p in FusionNet().parameters()) == 59856  # ≈60k, as released
    names = {n for n, _ in FusionNet().named_parameters()}
    assert "fusion.temperature1" in names and "decoder.1.attn.temperature" in names


@pytest.mark.parametrize("h, w", [(1, 1), (7, 5), (16, 24)])
def test_fusion_output_in_unit_interval(h, w):
    torch.manual_seed(0)
    net = FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=4))
    out = net(torch.rand(2, 1, h, w), torch.rand(2, 1, h, w))
    assert out.shape == (2, 1, h, w) and torch.all((out > 0) & (out < 1))


def test_loss_generator_weights_sum_to_one_and_depend_on_input():
    torch.manual_seed(0)
    g = LossGenerator(LossGeneratorConfig(dim=8, num_blocks=1, heads=4))
    a, b = torch.rand(1, 1, 12, 10), torch.rand(1, 1, 12, 10)
    w = g(a, b)
    assert w.shape == (1, 2, 12, 10)
    assert torch.allclose(w.sum(1), torch.ones(1, 12, 10), atol=1e-6)
    assert (g(a, b) - g(b, a)).abs().max() > 1e-4


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        FusionNetConfig(dim=10, heads=4)
    with pytest.raises(ValueError, match="unknown"):
        FusionNetConfig.from_dict({"dim": 16, "width": 3})


def test_second_order_gradients_flow_through_the_network():
    # The meta step differentiates the gradient of the fusion loss w.r.t. F's parameters.
    torch.manual_seed(0)
    net = FusionNet(FusionNetConfig(dim=4, num_blocks=1, heads=2)).double()
    x = torch.rand(1, 1, 6, 5, dtype=torch.float64)
    w = torch.rand(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    loss = ((net(x, x) - x) ** 2 * w).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
    (sum(g.pow(2).sum() for g in grads)).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
