"""Where a run or a measurement was made, as records name it: the glmc commit, the machine, the device.

A speed figure means little without the processor it was measured on: two 2-core machines that
both say x86_64 can differ by nearly 2x in one training step, as AMX and AVX-512 bf16 do. So every
record that carries a time (a run's sessions and summary, `glmc bench`, the benchmarks) names the
CPU model and the bf16 instructions it has, not only the architecture.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

import glmc

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # what makes a CPU's bf16 fast, best first (Linux's names)


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


def cpuinfo_field(name: str, cpuinfo: Path | None = None) -> str | None:
    """The first processor's `name` field in /proc/cpuinfo, or None (no such file or field: not Linux)."""
    try:
        lines = (cpuinfo or CPUINFO).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: Path | None = None) -> str:
    """The processor's marketing name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C"), from /proc/cpuinfo on Linux,
    sysctl on macOS; the architecture where neither says."""
    model = cpuinfo_field("model name", cpuinfo)
    if model is None and platform.system() == "Darwin":
        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            model = None
    return model or platform.processor() or platform.machine()


def cpu_bf16(cpuinfo: Path | None = None) -> str | None:
    """The best bf16 instruction set the CPU announces (`amx_bf16`, `avx512_bf16`), or None."""
    flags = set((cpuinfo_field("flags", cpuinfo) or "").split())
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def cpu_description(cpuinfo: Path | None = None) -> str:
    """"AMD EPYC, x86_64, avx512_bf16": the model, the architecture and the bf16 instructions, where known."""
    parts = [cpu_model(cpuinfo), platform.machine()]
    bf16 = cpu_bf16(cpuinfo)
    return ", ".join(dict.fromkeys(filter(None, [*parts, bf16])))  # dict: the model may be the architecture itself


def machine_description() -> str:
    """The machine a measurement ran on: "AMD EPYC, x86_64, avx512_bf16, 2 CPUs, Linux 6.18.44"."""
    return f"{cpu_description()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def device_name(device: torch.device) -> str:
    """"cuda (NVIDIA H200)", "cpu (AMD EPYC, x86_64, avx512_bf16, 2 threads)": the device's kind first (what
    `glmc reproduce --dry-run` keys bench figures on), then the GPU's name or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_description()}, {torch.get_num_threads()} threads)"


def measured_on() -> str:
    """The header line of a benchmark's printed figures: where, with which torch, at which commit."""
    return f"# measured on {machine_description()}; torch {torch.__version__}; glmc commit {git_commit() or 'unknown'}"
