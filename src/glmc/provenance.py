"""Where a run or a measurement was made, as records name it: the glmc commit, the device, the torch.

The machine itself (the CPU model, generation and bf16 instructions) is glmc.machine's, which needs
no torch; what needs torch (the GPU's name, the threads torch uses, its version) is here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

import glmc
from glmc.machine import cpu_description, machine_description


def git_commit() -> str | None:
    """The commit of the glmc source tree this run used, `-dirty` if it had local changes."""
    source = Path(glmc.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    """"cuda (NVIDIA H200)", "cpu (AMD EPYC (family 25 model 17), x86_64, avx512_bf16, 2 threads)": the device's
    kind first (what `glmc reproduce --dry-run` keys bench figures on), then the GPU's name or the CPU's with the
    threads torch uses."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_description()}, {torch.get_num_threads()} threads)"


def measured_on() -> str:
    """The header line of a benchmark's printed figures: where, with which torch, at which commit."""
    return f"# measured on {machine_description()}; torch {torch.__version__}; glmc commit {git_commit() or 'unknown'}"
