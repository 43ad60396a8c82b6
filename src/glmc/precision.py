"""The numeric precision of forward passes: fp32, or bf16 autocast.

`train.precision` (default `auto`) sets the training forward: `auto` is bf16 where the device
computes it natively (CUDA GPUs with bf16, CPUs with AVX-512 BF16 or AMX) and fp32 elsewhere.
Only the model's forward runs under autocast (`MixedPrecision`): its outputs come back in
fp32, so the mixing, the losses and their parts, the master weights and the optimiser state
are fp32 whatever the setting. `eval.precision` (default `fp32`) sets every evaluation forward
(training's test passes, `glmc eval`, `report`, `predict`, `calibrate`), so a reported top-1
never depends on bf16 rounding of the logits.

Inputs and weights use channels-last memory on every device: on an AMD EPYC CPU it was faster
than the contiguous layout in fp32 and in bf16 (docs/speed.md).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from glmc.errors import ConfigError
from glmc.models.output import GLMCOutput
from glmc.registry import unknown_name_message

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (so bf16 autocast is faster than fp32 there)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def check_precision(name: str, key: str = "precision") -> None:
    if name not in PRECISIONS:
        raise ConfigError(unknown_name_message(f"{key} value", name, list(PRECISIONS)))


def resolve_precision(name: str, device: torch.device) -> str:
    """`fp32` or `bf16`: `auto` becomes bf16 where the device has it natively."""
    check_precision(name)
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for `bf16`; nothing for `fp32`."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(x: Tensor) -> Tensor:
    """A 4-d batch in channels-last memory (a no-op when it already is)."""
    return x.contiguous(memory_format=torch.channels_last)


class MixedPrecision(nn.Module):
    """`module`'s forward under `precision`'s autocast, every `GLMCOutput` field returned in fp32.

    Input N x C x H x W (any layout, made channels-last); output a `GLMCOutput` of float32
    tensors (None for heads not computed). Holds no parameters of its own: `module`'s are the master weights, in fp32.
    """

    def __init__(self, module: nn.Module, precision: str, device: torch.device) -> None:
        super().__init__()
        self.module, self.precision, self.device = module, precision, device

    def forward(self, x: Tensor) -> GLMCOutput:
        with autocast(self.precision, self.device):
            out = self.module(channels_last(x))
        return GLMCOutput(*(None if field is None else field.float() for field in out))


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Tensor, precision: str) -> Tensor:
    """The evaluation forward every command shares: N x C x H x W normalised images -> N x K fp32 logits.

    `model` must be in eval mode, on the inputs' device.
    """
    with autocast(precision, inputs.device):
        return model(channels_last(inputs)).logits.float()
