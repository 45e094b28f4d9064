"""Checkpoint loading: released layout strictly, our own format round trip, clear errors."""
import pytest
import torch

from tdfusion_edge.checkpoints import (convert_released_state_dict, load_model, read_torch_file,
                                       save_checkpoint)
from tdfusion_edge.errors import CheckpointError
from tdfusion_edge.models import FusionNet, FusionNetConfig, LossGenerator, LossGeneratorConfig

TINY = dict(dim=4, num_blocks=1, heads=2)


def released_layout(model: FusionNet) -> dict:
    """Our state dict written back in the released layout (duplicated convs, ``.body.``, ``FM.``)."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("fusion.", "FM.", 1) if key.startswith("fusion.") else key
        if key.endswith("norm1.weight") or key.endswith("norm1.bias") or key.endswith("norm2.weight") \
                or key.endswith("norm2.bias"):
            head, leaf = key.rsplit(".", 1)
            key = f"{head}.body.{leaf}"
        out[key] = value.clone()
        if value.dim() == 4:
            out[key.replace(".weight", ".conv.weight")] = value.clone()
    return out


def test_released_checkpoint_loads_with_inferred_config(released_weights):
    model, info = load_model(released_weights)
    assert info["format"] == "released"
    assert info["config"] == FusionNetConfig().to_dict()
    assert sum(p.numel() for p in model.parameters()) == 59856


def test_released_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    src = FusionNet(FusionNetConfig(**TINY))
    path = tmp_path / "released.pth"
    torch.save(released_layout(src), path)
    loaded, info = load_model(path)
    assert info["config"]["dim"] == 4
    for (k, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.pop("encoder1.0.attn.temperature"), "encoder1.0.attn.temperature"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected key 'extra.weight'"),
    (lambda sd: sd.__setitem__("decoder.0.norm1.body.weight", torch.zeros(5)), "decoder.0.norm1.weight"),
])
def test_released_layout_bad_keys_are_named(tmp_path, mutate, message):
    sd = released_layout(FusionNet(FusionNetConfig(**TINY)))
    mutate(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_model(path)


def test_duplicate_conv_twins_must_agree():
    sd = released_layout(FusionNet(FusionNetConfig(**TINY)))
    sd["project_in_1.conv.weight"] = sd["project_in_1.conv.weight"] + 1
    with pytest.raises(CheckpointError, match="same tensor"):
        convert_released_state_dict(sd)


def test_own_format_round_trip_with_provenance(tmp_path):
    torch.manual_seed(1)
    for model in (FusionNet(FusionNetConfig(**TINY)), LossGenerator(LossGeneratorConfig(**TINY))):
        path = save_checkpoint(model, tmp_path / f"{type(model).__name__}.pt", {"note": "test", "steps": 3})
        loaded, info = load_model(path, type(model).__name__)
        assert info["format"] == "tdfusion-edge"
        assert info["provenance"]["note"] == "test" and "created" in info["provenance"]
        assert loaded.config == model.config
        x = torch.rand(1, 1, 16, 12)
        with torch.no_grad():
            assert torch.equal(model.eval()(x, x), loaded(x, x))


def test_wrong_model_kind_is_rejected(tmp_path):
    path = save_checkpoint(LossGenerator(LossGeneratorConfig(**TINY)), tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="holds a LossGenerator"):
        load_model(path, "FusionNet")


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is a text file, not a PyTorch checkpoint"):
        read_torch_file(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_torch_file(tmp_path / "nope.pth")


def test_pickled_objects_are_refused(tmp_path):
    # weights_only=True: arbitrary pickled objects never execute or load.
    path = tmp_path / "evil.pth"
    torch.save({"state": {"a": 1}, "obj": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError):
        load_model(path)
