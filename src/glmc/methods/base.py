"""What every training method shares: its options, what it reads, its result, and the registry.

A method is a class registered with `@METHODS.register(name)`. It declares

- `Options`: a frozen dataclass deriving from `MethodOptions` that holds its own typed options
  (`method.<option>` in the config; any other key is refused, naming these),
- `needs` (after construction): the streams, views and heads it reads (`Needs`), from which
  the run builds the loader and the model's forward, and
- optionally `required_classifier`, the prediction head it needs (the config refuses others), and
  an `Options.logit_scale` other than 1 where its loss scales the head's outputs (LDAM's s).

It is built once per run as `cls(options, class_counts, total_epochs)` and called every step
as `method(model, batch, epoch, rng) -> StepResult`, where `model(x)` returns a `GLMCOutput`.
A newcomer adds a method with one file, imported in `glmc/methods/__init__.py`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, Sequence

import numpy as np
from torch import Tensor, nn

from glmc.data.batch import BatchSpec, TwoStreamBatch
from glmc.errors import ConfigError
from glmc.registry import Registry, close_matches

CUTMIX_LABELS = ("lambda", "area")


@dataclass(frozen=True)
class SearchRange:
    """Where `glmc tune` looks for one config value: `low` to `high` (on a log scale if `log`), or one of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None


# What every method's search space holds: the optimiser's two main values (config keys).
COMMON_SEARCH_SPACE = {"optim.lr": SearchRange(1e-3, 0.3, log=True), "optim.weight_decay": SearchRange(1e-5, 1e-2, log=True)}


@dataclass(frozen=True)
class MethodOptions:
    """The options every method has: its name. A method's own `Options` derive from this, and declare in
    `search_space` where `glmc tune` looks for them (config keys -> `SearchRange`), beside the options."""

    name: str = "glmc"
    search_space: ClassVar[dict[str, SearchRange]] = {}

    def __post_init__(self) -> None:
        """Validation of the subclasses' fields; each calls `super().__post_init__()`."""

    @property
    def logit_scale(self) -> float:
        """The factor the method's loss puts on the prediction head's outputs before its softmax (LDAM's s; 1 for
        the others). The model applies it (`glmc.models.create_model`), so that its logits, and the probabilities
        that evaluation, prediction and export give, are the ones the loss trained."""
        return 1.0


@dataclass(frozen=True)
class Needs:
    """What a method reads each step: the batch's parts (`BatchSpec`) and the model's heads."""

    batch: BatchSpec = BatchSpec(resampled=False, views=(1,))
    heads: frozenset[str] = field(default_factory=lambda: frozenset({"fc_cb"}))


class StepResult(NamedTuple):
    """One training step's outcome.

    `loss` carries the graph for `backward()`; `parts` are detached scalar tensors for
    logging, left on the device so the training loop never waits on a `.item()`.
    """

    loss: Tensor
    parts: dict[str, Tensor]


class Method(Protocol):
    Options: ClassVar[type[MethodOptions]]
    needs: Needs

    def __call__(
        self, model: nn.Module, batch: TwoStreamBatch, epoch: int, rng: np.random.Generator
    ) -> StepResult: ...


METHODS: Registry[type] = Registry("method")


def method_options(name: str = "glmc", **values: Any) -> MethodOptions:
    """The options of method `name`: its defaults, then `values` (already typed); validated."""
    options_type = METHODS.get(name).Options
    known = option_names(name)
    for key in values:
        if key not in known:
            raise ConfigError(unknown_option_message(name, key))
    return options_type(name=name, **values)


def search_space(name: str) -> dict[str, SearchRange]:
    """Where `glmc tune` looks by default for method `name`: the common values and the method's own."""
    return {**COMMON_SEARCH_SPACE, **METHODS.get(name).Options.search_space}


def option_names(name: str) -> list[str]:
    """The options of method `name`, without `name` itself."""
    return [f.name for f in dataclasses.fields(METHODS.get(name).Options) if f.name != "name"]


def option_types(name: str) -> dict[str, Any]:
    hints = typing.get_type_hints(METHODS.get(name).Options)
    return {key: hints[key] for key in option_names(name)}


def unknown_option_message(name: str, key: str) -> str:
    own = option_names(name)
    if not own:
        return f"method {name} has no options, got method.{key}"
    return f"method {name} has no option {key!r}{close_matches(key, own)} (its options: {', '.join(own)})"


def create_method(options: MethodOptions, class_counts: Sequence[int], total_epochs: int) -> Method:
    """Build the method named by `options.name`; unknown names raise ConfigError with close matches."""
    constructor = METHODS.get(options.name)
    if not isinstance(options, constructor.Options):
        raise ConfigError(f"method {options.name} takes {constructor.Options.__name__}, got {type(options).__name__}")
    if total_epochs <= 0:
        raise ConfigError(f"total_epochs must be positive, got {total_epochs}")
    return constructor(options, class_counts, total_epochs)


def require(ok: bool, message: str) -> None:
    """For the options' `__post_init__`: a one-line ConfigError unless `ok`."""
    if not ok:
        raise ConfigError(message)
