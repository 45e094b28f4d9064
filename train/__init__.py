"""Training of TDFusion (Algorithm 1): meta steps for the loss generator G, the fusion phase for F and T,
the trainer (config, logging, evaluation, checkpoints, exact resume, NaN guard, DDP).

- ``config``: ``TrainConfig`` (defaults = the released training code), YAML + ``key=value`` overrides
- ``meta_step``: the inner / outer update as pure functions on parameter dicts (``functional_call``)
- ``fusion_phase``: one step of F and T with G frozen
- ``ablations``: the switches of the paper's Table 3
- ``trainer``: ``Trainer(cfg, out_dir).fit(resume=None)``
- ``distributed``: torchrun / DDP helpers; ``weight_maps``: PNGs of G's weights
"""
from .ablations import Ablations
from .config import ConfigError, TrainConfig, build_config
from .meta_step import LossSettings, MetaHyper, MetaNets, meta_gradient, meta_objective, meta_step
from .trainer import Trainer, TrainingDiverged

__all__ = ["Ablations", "ConfigError", "TrainConfig", "build_config", "LossSettings", "MetaHyper", "MetaNets",
           "meta_gradient", "meta_objective", "meta_step", "Trainer", "TrainingDiverged"]
