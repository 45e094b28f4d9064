"""Networks of TDFusion: the fusion network F and the loss generator G."""
from .config import FusionNetConfig, LiteFusionNetConfig, LossGeneratorConfig, NetConfig
from .fusion_net import FusionNet
from .lite import LiteFusionNet
from .loss_generator import LossGenerator

__all__ = ["NetConfig", "FusionNetConfig", "LossGeneratorConfig", "LiteFusionNetConfig", "FusionNet", "LossGenerator",
           "LiteFusionNet"]
