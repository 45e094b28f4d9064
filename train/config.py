"""Training configuration: one flat dataclass, loadable from YAML, overridable by ``key=value``.

Defaults are the released training code's settings (40 epochs, M = 200 meta steps, Adam 1e-4 for
F and T, StepLR(10, 0.1), batch 2 made of one pair and its swapped twin, α = 1, inner step = F's
current lr, G stepped by its gradient divided by the gradient's largest magnitude).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from tdfusion_edge.validation.train_config import ConfigError, check_train_values
from tdfusion_edge.models import FusionNetConfig, LossGeneratorConfig

TASKS = ("seg", "det")
G_UPDATES = ("maxnorm", "adam")
INNER_TASK_STEPS = ("adam", "sgd")
INTENSITY_FORMS = ("paper", "released")
# Table 3 of the paper, one switch each (see ablations.py for what each one changes).
ABLATIONS = ("fixed_w", "no_grad_loss", "task_drives_f", "no_fusion_phase", "weighted_average")


@dataclass
class TrainConfig:
    """Every setting of a training run; see docs/training.md for each key."""

    # data and task
    data: str = "synthetic"
    data_root: str | None = None  # dataset folder, overriding the dataset YAML's path:
    task: str = "seg"
    task_weights: str | None = None
    num_classes: int | None = None
    class_weights: Any = None  # seg only: None (released), "enet" or one weight per class
    synthetic: dict[str, Any] = field(default_factory=dict)
    crop_size: int | None = None
    task_size: list[int] | None = None
    num_workers: int = 2
    # schedule (released: 40 epochs; the paper says 50)
    epochs: int = 40
    meta_steps: int = 200
    fusion_steps: int = 0
    batch_size: int = 2
    swap: bool = True
    # optimisation
    lr: float = 1e-4
    lr_step: int = 10
    lr_gamma: float = 0.1
    inner_lr: float | None = None
    inner_task_step: str = "adam"
    g_update: str = "maxnorm"
    g_lr: float = 1e-4
    # fusion loss
    alpha: float = 1.0
    intensity_form: str = "paper"
    ablations: list[str] = field(default_factory=list)
    remove_brightness_mode: bool = False  # variant: meta-gradient without the per-image I_ir - I_vis mode
    # networks (init_fusion: start F from a FusionNet checkpoint, ours or the released layout)
    init_fusion: str | None = "auto"  # auto: the built-in weights when F has their size, else scratch
    fusion_net: dict[str, Any] = field(default_factory=lambda: FusionNetConfig().to_dict())
    loss_generator: dict[str, Any] = field(default_factory=lambda: LossGeneratorConfig().to_dict())
    # bookkeeping
    seed: int = 0
    eval_every: int = 1
    eval_samples: int = 0
    metric_samples: int = 8
    weight_map_samples: int = 4
    checkpoint_every: int = 100
    log_every: int = 10
    keep_epoch_checkpoints: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on the first value that cannot work."""
        _choice("task", self.task, TASKS)
        _choice("g_update", self.g_update, G_UPDATES)
        _choice("inner_task_step", self.inner_task_step, INNER_TASK_STEPS)
        _choice("intensity_form", self.intensity_form, INTENSITY_FORMS)
        for name in self.ablations:
            _choice("ablations", name, ABLATIONS)
        if self.class_weights not in (None, "none"):
            if self.task != "seg":
                raise ConfigError("class_weights applies to the segmentation task only (task: seg)")
            if not (self.class_weights == "enet" or isinstance(self.class_weights, (list, tuple))):
                raise ConfigError(f"class_weights must be none, enet or a list of per-class weights, "
                                  f"got {self.class_weights!r}")
        if self.crop_size is not None and self.crop_size < 8:
            raise ConfigError(f"crop_size must be at least 8, got {self.crop_size}")
        for name in ("epochs", "batch_size", "lr_step", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("meta_steps", "fusion_steps", "num_workers", "eval_samples", "metric_samples",
                     "weight_map_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.swap and self.batch_size % 2:
            raise ConfigError(f"batch_size {self.batch_size} must be even with swap on "
                              "(each pair is fed twice, as (ir, vis) and as (vis, ir))")
        if self.lr <= 0 or self.g_lr <= 0 or (self.inner_lr is not None and self.inner_lr <= 0):
            raise ConfigError("learning rates must be positive")
        if self.task_size is not None and len(self.task_size) != 2:
            raise ConfigError(f"task_size must be [height, width], got {self.task_size}")
        if "no_fusion_phase" in self.ablations and ({"weighted_average", "fixed_w"} & set(self.ablations)):
            raise ConfigError("ablation no_fusion_phase needs the meta phase, which fixed_w and weighted_average "
                              "remove: F would never be trained")
        try:
            FusionNetConfig.from_dict(dict(self.fusion_net))
            LossGeneratorConfig.from_dict(dict(self.loss_generator))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad network size: {exc}") from None

    def fusion_net_config(self) -> FusionNetConfig:
        """F's size as the models' config class."""
        return FusionNetConfig.from_dict(dict(self.fusion_net))

    def loss_generator_config(self) -> LossGeneratorConfig:
        """G's size as the models' config class."""
        return LossGeneratorConfig.from_dict(dict(self.loss_generator))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys are an error naming them; nested net dicts are merged."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        merged = {k: _coerce(k, v) for k, v in values.items()}
        check_train_values(merged)
        for net in ("fusion_net", "loss_generator"):
            if net in merged and merged[net] is not None:
                base = (FusionNetConfig() if net == "fusion_net" else LossGeneratorConfig()).to_dict()
                base.update(dict(merged[net]))
                merged[net] = base
        try:
            return cls(**merged)
        except TypeError as exc:
            raise ConfigError(f"bad config: {exc}") from None


def _coerce(name: str, value: Any) -> Any:
    """Numbers given as text (YAML reads ``3e-4`` as a string) become the field's number type."""
    kind = _FIELD_TYPES.get(name, "")
    if not isinstance(value, str):
        return value
    try:
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("int"):
            return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    return value


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys (no validation yet: overrides come first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, found {type(values).__name__}")
    return values


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (['a', 'b'], value parsed as YAML, so 1e-4, true, [240, 320] and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return ``values`` with each ``key=value`` (dotted keys reach into net sizes) applied."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "ablations" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        target[path[-1]] = value
    return out


def build_config(config_file: str | Path | None = None, overrides: Sequence[str] = (),
                 base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults ← ``base`` (e.g. a resumed run's config) ← config file ← overrides, validated."""
    values: dict[str, Any] = dict(base or {})
    if config_file is not None:
        values.update(load_config_file(config_file))
    return TrainConfig.from_dict(apply_overrides(values, overrides))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML beside the run's outputs (what ``--config`` reads back)."""
    from tdfusion_edge.validation.output_path import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


_FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}
