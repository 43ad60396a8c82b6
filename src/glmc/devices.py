"""The device a command runs on, from its name: "auto", "cpu", "cuda" or "cuda:N"."""

from __future__ import annotations

import torch

from glmc.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return torch.device(name)
