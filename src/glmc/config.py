"""Typed run configuration, presets and type-checked overrides.

A `Config` is six small dataclasses; its `method` section is the chosen method's own options
(`glmc.methods.base`). Defaults are the GLMC authors' CIFAR recipe under the standard
protocol; a preset (presets.yaml) changes only what differs; command-line overrides
(`section.field=value`) are parsed against the field's type, and an unknown key is an error
that names the close matches (for `method.*`, the chosen method's options).

Configs written by earlier versions (run folders, checkpoints) load through
`stored_config`, which drops the method options that other methods owned then.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from glmc.autoaugment import AUTOAUGMENT_POLICIES
from glmc.data.datasets import DATASETS, DataConfig
from glmc.data.files import UNREADABLE_POLICIES
from glmc.data.longtail import SPLITS
from glmc.data.samplers import SAMPLERS
from glmc.data.validation import VALIDATIONS
from glmc.errors import ConfigError
from glmc.methods import METHODS, MethodOptions, method_options
from glmc.methods.base import option_names, option_types, unknown_option_message
from glmc.models import BACKBONES, CLASSIFIERS
from glmc.precision import check_precision
from glmc.registry import unknown_name_message
from glmc.shots import SHOT_BOUNDS

SCHEDULES = ("cosine", "warmup-cosine", "warmup-step", "ramp-cosine")
NONFINITE_POLICIES = ("stop", "skip")
# torch.compile's modes; "reduce-overhead" replays CUDA graphs, the lever for a launch-bound GPU step
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConfig:
    backbone: str = "resnet32"  # standard CIFAR ResNet-32 (16/32/64); "resnet32-wide" is the authors'
    classifier: str = "linear"  # the prediction head fc_cb: "linear", or "cosine" (LDAM's normalised one)


@dataclass
class OptimConfig:
    """SGD with momentum; the learning rate is set at the start of every epoch."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-3
    # "cosine": the authors' CIFAR schedule, CosineAnnealingLR(T_max=epochs) stepped per epoch.
    # "warmup-cosine": their ImageNet-LT/iNat schedule, linear warm-up then cosine.
    # "warmup-step": Cao et al.'s LDAM-DRW CIFAR schedule, linear warm-up then step decay (decay_at, decay_factor).
    # "ramp-cosine": Ren et al.'s Balanced Softmax CIFAR schedule, a straight line from warmup_start x lr at epoch 0
    # to lr at epoch warmup_epochs - 1, then cosine to 0 at the last epoch.
    schedule: str = "cosine"
    warmup_epochs: int = 10
    warmup_start: float = 0.5  # ramp-cosine: the first epoch's lr as a fraction of lr (Ren et al.'s 0.05 of 0.1)
    # warmup-step: the lr is multiplied by decay_factor at each of these fractions of train.epochs (rounded to an
    # epoch, as method.drw_start is): Cao et al.'s 0.01 at epochs 160 and 180 of 200.
    decay_at: list[float] = field(default_factory=lambda: [0.8, 0.9])
    decay_factor: float = 0.01
    # The authors' ImageNet-LT/iNat code sets the lr after each epoch from the epoch just ended, so
    # epoch 0 trains at the full lr and epoch e at the schedule's value for e - 1. True follows it
    # (the -authors presets of those datasets); False trains epoch e at the value for e.
    schedule_lag: bool = False
    # Sharpness-aware minimisation (Foret et al. 2021; glmc.sam): the radius rho of the weight
    # perturbation. 0 is plain SGD; Rangwani et al. 2022 use 0.05 (CIFAR-10) and 0.01-0.02 (CIFAR-100) on GLMC.
    sam_rho: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 64
    sampler: str = "power"  # re-sampled stream: "power" (image weight 1/n^q) or "reversed" (BBN)
    resample_weighting: float = 0.0  # q of the power sampler (authors' --resample_weighting)
    drop_last: bool = False  # the authors keep the last, partial batch of an epoch
    seed: int = 0
    eval_every: int = 1  # epochs between test-set evaluations (the last epoch is always evaluated)
    # also evaluate after each of the last N epochs, whatever eval_every says: a sparse cadence that still shows
    # what choosing the best test epoch over the end of the schedule would add
    eval_last_epochs: int = 0
    eval_batch_size: int = 500
    max_steps: int | None = None  # stop after this many steps in all (smoke runs)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
    shot_bounds: str = "standard"  # many/medium/few bounds: "standard" or "authors" (few <= 20)
    nonfinite: str = "stop"  # a NaN/inf loss: "stop" the run (keeping the last good checkpoint) or "skip" the step
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints (None: at the end of each epoch)
    # minutes between checkpoints within an epoch (None: off), so a kill loses at most that much work
    # however long an epoch is; checked at the loop's sync points (every 25 steps)
    checkpoint_minutes: float | None = 10.0
    compile: bool = False  # torch.compile the training forward/backward (first steps compile: minutes on a CPU)
    compile_mode: str = "default"  # with compile: torch.compile's mode (COMPILE_MODES)
    # The training forward: "fp32", "bf16" (autocast; weights, optimiser state and losses stay fp32) or
    # "auto": bf16 where the device has it natively (CUDA, CPUs with AVX-512 BF16 or AMX), else fp32.
    precision: str = "auto"
    sync_batchnorm: bool = False  # under torchrun: batch statistics over all ranks' images (SyncBatchNorm)


@dataclass
class EvalConfig:
    # Every evaluation forward (training's test passes, glmc eval, report, predict, calibrate): "fp32" by
    # default, so a reported accuracy never depends on bf16 rounding of the logits; "bf16" or "auto" as for training.
    precision: str = "fp32"
    # The evaluations during training before the last one: "fp32", "bf16" or "auto". bf16 takes a CPU with bf16 about
    # half the time and moved the committed standard checkpoints' top-1 by -0.05 (docs/speed.md), so it is opt-in;
    # the final epoch's evaluation, the headline, always runs in `precision`.
    interim_precision: str = "fp32"
    # Whether evaluations test the model on the test set. False (glmc tune's trials, which choose on the validation set)
    # never looks at it and needs data.validation=held-out.
    test: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodOptions = field(default_factory=method_options)  # the method's own options (GLMC's by default)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def config_keys() -> list[str]:
    """Every settable key, as `section.field`; `method.*` lists every method's options."""
    defaults = Config()
    keys = [f"{s}.{f.name}" for s in SECTIONS if s != "method" for f in dataclasses.fields(getattr(defaults, s))]
    options = sorted({option for name in METHODS.names() for option in option_names(name)})
    return keys + ["method.name"] + [f"method.{option}" for option in options]


def build_config(preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the preset's values, then the overrides; validated.

    The preset's method options go only to a method that has them (a GLMC preset with
    `method.name=ce` drops GLMC's tau and gamma); an override naming an option the method
    does not have is an error.
    """
    overrides = flatten(overrides or {})
    values = preset_values(preset) if preset is not None else {}
    name = overrides.get("method.name", values.get("method.name", Config().method.name))
    values = {**without_foreign_options(values, name), **overrides}
    return config_from_dict(values)


def stored_config(values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Config:
    """A config as a run folder or checkpoint stored it, read by this version.

    Versions before per-method options stored every method's options under `method`; the
    ones the run's method does not have were never read, and are dropped.
    """
    values = flatten(values)
    name = flatten(overrides or {}).get("method.name", values.get("method.name", Config().method.name))
    return config_from_dict({**without_foreign_options(values, str(name)), **flatten(overrides or {})})


def without_foreign_options(values: Mapping[str, Any], method: str) -> dict[str, Any]:
    """`values` less the `method.*` options that method `method` does not have."""
    own = set(option_names(method)) | {"name"} if method in METHODS else None
    return {key: value for key, value in values.items()
            if not (own is not None and key.startswith("method.") and key.split(".", 1)[1] not in own)}


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """A validated Config from `section.field` keys (or nested `{section: {field: ...}}`)."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in flatten(values).items():
        section, name = split_key(key)
        sections[section][name] = value
    defaults = Config()
    built = {}
    for section, changes in sections.items():
        if section == "method":
            built[section] = method_from_dict(changes)
            continue
        base = getattr(defaults, section)
        hints = typing.get_type_hints(type(base))
        typed = {name: coerce(f"{section}.{name}", raw, hints[name]) for name, raw in changes.items()}
        built[section] = type(base)(**{**dataclasses.asdict(base), **typed})
    config = Config(**built)
    validate(config)
    return config


def method_from_dict(values: Mapping[str, Any]) -> MethodOptions:
    """The method's options from `{name, option: value}`: each option must be one of that method's."""
    values = dict(values)
    name = coerce("method.name", values.pop("name", Config().method.name), str)
    types = option_types(name)  # an unknown method names the close matches
    for key in values:
        if key not in types:
            raise ConfigError(unknown_option_message(name, key))
    return method_options(name, **{key: coerce(f"method.{key}", raw, types[key]) for key, raw in values.items()})


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def split_key(key: str) -> tuple[str, str]:
    """`section.field` -> (section, field); `method.*` keys are checked against the method later."""
    section, _, name = key.partition(".")
    known = config_keys()
    if key not in known and not (section == "method" and name and "." not in name):
        raise ConfigError(unknown_name_message("config key", key, known))
    return section, name


def parse_override(text: str) -> tuple[str, str]:
    """`section.field=value` -> (key, raw string value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.field=value")
    return key.strip(), value.strip()


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def coerce(key: str, raw: Any, hint: Any) -> Any:
    """`raw` (a string from the command line, or a YAML value) as the field's type."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    try:
        return _coerce_plain(raw, hint)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} expects {_type_name(hint, optional)}, got {raw!r}") from None


def _coerce_plain(raw: Any, hint: Any) -> Any:
    if typing.get_origin(hint) is list:  # a YAML list, or "0.8,0.9" from the command line
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError
        (item_type,) = typing.get_args(hint)
        return [_coerce_plain(item.strip() if isinstance(item, str) else item, item_type) for item in items if item != ""]
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError
    if isinstance(raw, bool):  # True is an int to Python, never to a user
        raise ValueError
    if hint is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return int(raw) if not isinstance(raw, str) else int(raw, 10)
    if hint is float:
        value = float(raw)
        if not math.isfinite(value):  # inf trains until the loss is NaN; no field means it
            raise ValueError
        return value
    if hint is str:
        if not isinstance(raw, str):
            raise ValueError
        return raw
    raise TypeError(hint)


def _type_name(hint: Any, optional: bool) -> str:
    if typing.get_origin(hint) is list:
        return f"a comma-separated list of {_type_name(typing.get_args(hint)[0], False).removeprefix('a ')}s"
    name = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[hint]
    return f"{name} or none" if optional else name


def validate(config: Config) -> None:
    """Reject values no run could use, with one line naming the key."""
    DATASETS.get(config.data.dataset)
    SPLITS.get(config.data.split)
    BACKBONES.get(config.model.backbone)
    METHODS.get(config.method.name)
    CLASSIFIERS.get(config.model.classifier)
    required = getattr(METHODS.get(config.method.name), "required_classifier", None)
    if required is not None and config.model.classifier != required:
        raise ConfigError(f"method {config.method.name} needs model.classifier={required}, got {config.model.classifier}")
    SAMPLERS.get(config.train.sampler)
    if config.train.shot_bounds not in SHOT_BOUNDS:
        raise ConfigError(unknown_name_message("shot bounds", config.train.shot_bounds, sorted(SHOT_BOUNDS)))
    if config.train.nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(unknown_name_message("non-finite policy", config.train.nonfinite, list(NONFINITE_POLICIES)))
    if config.train.compile_mode not in COMPILE_MODES:
        raise ConfigError(unknown_name_message("compile mode", config.train.compile_mode, list(COMPILE_MODES)))
    if config.data.unreadable not in UNREADABLE_POLICIES:
        raise ConfigError(unknown_name_message("unreadable-image policy", config.data.unreadable, list(UNREADABLE_POLICIES)))
    check_precision(config.train.precision, "train.precision")
    check_precision(config.eval.precision, "eval.precision")
    check_precision(config.eval.interim_precision, "eval.interim_precision")
    if config.optim.schedule not in SCHEDULES:
        raise ConfigError(unknown_name_message("schedule", config.optim.schedule, list(SCHEDULES)))
    _require(config.data.imbalance_factor >= 1, "data.imbalance_factor must be >= 1", config.data.imbalance_factor)
    _require(config.data.image_size >= 8, "data.image_size must be >= 8", config.data.image_size)
    _require(config.data.resize >= config.data.image_size, f"data.resize must be >= data.image_size ({config.data.image_size})",
             config.data.resize)
    _require(config.data.workers >= 0, "data.workers must be >= 0", config.data.workers)
    if config.data.validation not in VALIDATIONS:
        raise ConfigError(unknown_name_message("validation protocol", config.data.validation, list(VALIDATIONS)))
    _require(config.data.val_per_class is None or config.data.val_per_class >= 1, "data.val_per_class must be >= 1 (or none)",
             config.data.val_per_class)
    _require(0 < config.data.val_fraction < 1, "data.val_fraction must be in (0, 1)", config.data.val_fraction)
    if config.data.autoaugment not in AUTOAUGMENT_POLICIES:
        raise ConfigError(unknown_name_message("AutoAugment policy", config.data.autoaugment, list(AUTOAUGMENT_POLICIES)))
    _require(config.data.cutout >= 0, "data.cutout must be >= 0 (0: no hole)", config.data.cutout)
    _require(config.eval.test or config.data.validation != "none",
             "eval.test=false evaluates nothing: it needs a validation set (data.validation=held-out)", config.data.validation)
    _require(config.optim.lr > 0, "optim.lr must be > 0", config.optim.lr)
    _require(config.optim.momentum >= 0, "optim.momentum must be >= 0", config.optim.momentum)
    _require(config.optim.weight_decay >= 0, "optim.weight_decay must be >= 0", config.optim.weight_decay)
    _require(config.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0", config.optim.warmup_epochs)
    _require(0 <= config.optim.warmup_start <= 1, "optim.warmup_start must be in [0, 1]", config.optim.warmup_start)
    _require(config.optim.schedule != "ramp-cosine" or config.optim.warmup_epochs < config.train.epochs,
             f"optim.warmup_epochs must be < train.epochs ({config.train.epochs}) for the ramp-cosine schedule",
             config.optim.warmup_epochs)
    decay_at = config.optim.decay_at
    _require(all(0 < at <= 1 for at in decay_at) and decay_at == sorted(decay_at),
             "optim.decay_at must be increasing fractions of train.epochs in (0, 1]", decay_at)
    _require(0 < config.optim.decay_factor <= 1, "optim.decay_factor must be in (0, 1]", config.optim.decay_factor)
    _require(0 <= config.optim.sam_rho < math.inf, "optim.sam_rho must be finite and >= 0", config.optim.sam_rho)
    _require(config.train.epochs > 0, "train.epochs must be > 0", config.train.epochs)
    _require(config.train.batch_size > 0, "train.batch_size must be > 0", config.train.batch_size)
    _require(config.train.eval_batch_size > 0, "train.eval_batch_size must be > 0", config.train.eval_batch_size)
    _require(config.train.resample_weighting >= 0, "train.resample_weighting (q) must be >= 0", config.train.resample_weighting)
    _require(config.train.eval_every > 0, "train.eval_every must be > 0", config.train.eval_every)
    _require(config.train.eval_last_epochs >= 0, "train.eval_last_epochs must be >= 0", config.train.eval_last_epochs)
    _require(config.train.max_steps is None or config.train.max_steps > 0, "train.max_steps must be > 0", config.train.max_steps)
    _require(config.train.checkpoint_every is None or config.train.checkpoint_every > 0,
             "train.checkpoint_every must be > 0", config.train.checkpoint_every)
    _require(config.train.checkpoint_minutes is None or 0 < config.train.checkpoint_minutes < math.inf,
             "train.checkpoint_minutes must be > 0 (or none)", config.train.checkpoint_minutes)
    device = config.train.device
    _require(device in ("auto", "cpu", "cuda") or device.startswith("cuda:"), "train.device must be auto, cpu, cuda or cuda:N", device)


def _require(ok: bool, message: str, value: Any) -> None:
    if not ok:  # a string is quoted, so that a value with a line break stays one line
        raise ConfigError(f"{message}, got {value!r}" if isinstance(value, str) else f"{message}, got {value}")


def load_presets() -> dict[str, dict]:
    """Name -> {description, values} from the packaged presets.yaml, grids expanded, in file order."""
    sections = yaml.safe_load(resources.files("glmc").joinpath("presets.yaml").read_text())
    presets: dict[str, dict] = {}
    for section in sections.values():
        presets.update(grid_presets(section) if "settings" in section else section)
    return presets


def grid_presets(grid: Mapping[str, Any]) -> dict[str, dict]:
    """The presets of a grid: each setting, each setting with `authors`, each setting with each method, and each
    setting with each recipe.

    A setting has a `title`, the `published` figures of the authors' run and `values` (GLMC's);
    a method has a `title` and optionally `values` of its own; a recipe names its `method` and holds the `values`
    of that method's own paper, which go on top of the method's, and optionally values `by_setting` (a recipe whose
    length depends on the training set's size). Method options of the setting go
    only to methods that have them (see `build_config`), so a preset can never lack its
    setting's tau or gamma where its method reads them.
    """
    settings, authors, methods = grid["settings"], grid["authors"], grid["methods"]
    presets = {name: {"description": f"{s['title']}, standard protocol", "values": s["values"], "setting": name}
               for name, s in settings.items()}
    presets |= {f"{name}-authors": {"description": f"the authors' {s['title']} run ({s['published']})",
                                    "values": deep_merge(s["values"], authors["values"])} for name, s in settings.items()}
    for name, setting in settings.items():
        for method, entry in methods.items():
            values = deep_merge(setting["values"], {"method": {"name": method}}, entry.get("values", {}))
            own = set(option_names(method)) | {"name"}
            values["method"] = {key: value for key, value in values["method"].items() if key in own}
            presets[f"{name}-{method}"] = {"description": f"{setting['title']}, {entry['title']}", "values": values,
                                           "setting": name}
    for recipe, entry in grid.get("recipes", {}).items():
        for name, setting in settings.items():
            values = deep_merge(presets[f"{name}-{entry['method']}"]["values"], entry["values"],
                                entry.get("by_setting", {}).get(name, {}))
            presets[f"{name}-{recipe}"] = {"description": f"{setting['title']}, {entry['title']}", "values": values}
    return presets


def method_preset(preset: str, method: str) -> str | None:
    """The preset that trains `method` on the setting of `preset`, a grid's GLMC preset or one of its
    `<setting>-<method>` presets, where that is another preset; else None. `--preset P --set method.name=M` keeps P's
    options that M has and M's defaults for the rest, which is not always the M of glmc's tables."""
    presets = load_presets()
    setting = presets.get(preset, {}).get("setting")
    if setting is None:
        return None
    candidate = setting if method == "glmc" else f"{setting}-{method}"
    return candidate if candidate in presets and candidate != preset else None


def deep_merge(*mappings: Mapping[str, Any]) -> dict[str, Any]:
    """The mappings merged left to right; nested mappings merge key by key, other values are replaced."""
    merged: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in mapping.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = deep_merge(value) if isinstance(value, Mapping) else value
    return merged


def preset_values(name: str) -> dict[str, Any]:
    presets = load_presets()
    if name not in presets:
        raise ConfigError(unknown_name_message("preset", name, sorted(presets)))
    return flatten(presets[name].get("values", {}))


def load_config_file(path: str | os.PathLike) -> tuple[str | None, dict[str, Any]]:
    """The preset and the values of a config file (`glmc train --config FILE`): `preset: NAME` and/or `values:
    {section: {key: value}}`, as `glmc tune` writes its best.yaml; or a run's config.yaml (every section written out)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must be a mapping: `preset: NAME` and/or `values: {{section: {{key: value}}}}`")
    if set(raw) <= {"preset", "values"}:
        values = raw.get("values") or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"config file {path}: `values` must be a mapping of sections")
        return raw.get("preset"), flatten(values)
    return None, flatten(raw)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
