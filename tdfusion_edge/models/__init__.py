"""Networks of TDFusion: the fusion network F and the loss generator G."""
from .config import FusionNetConfig, LossGeneratorConfig, NetConfig
from .fusion_net import FusionNet
from .loss_generator import LossGenerator

__all__ = ["NetConfig", "FusionNetConfig", "LossGeneratorConfig", "FusionNet", "LossGenerator"]
