"""The machine a measurement ran on, as records name it: the CPU model, generation and bf16 instructions.

A speed figure means little without the processor it was measured on: two 2-core machines that
both say x86_64 can differ by nearly 2x in one training step, as AMX and AVX-512 bf16 do, and by
4x more where a CPU has no native bf16 at all. So every record that carries a time (a run's sessions
and summary, `glmc bench`, the benchmarks) names the CPU model, its family and model numbers and the
bf16 instructions it has, not only the architecture. The family and model numbers matter because a
virtual machine's "model name" can be just "AMD EPYC" for several generations of it.

Nothing here imports torch, so a tool that only looks at the machine (a supervisor that sits
beside a long training run for hours, say) stays light.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # what makes a CPU's bf16 fast, best first (Linux's names)


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


def cpu_generation(cpuinfo: Path | None = None) -> str | None:
    """"family 25 model 17": an x86 processor's family and model numbers, which tell apart CPUs that share a
    model name (AMD EPYC of three generations on these VMs); None where /proc/cpuinfo has no such fields."""
    family, model = cpuinfo_field("cpu family", cpuinfo), cpuinfo_field("model", cpuinfo)
    return f"family {family} model {model}" if family and model else None


def cpu_bf16(cpuinfo: Path | None = None) -> str | None:
    """The best bf16 instruction set the CPU announces (`amx_bf16`, `avx512_bf16`), or None."""
    flags = set((cpuinfo_field("flags", cpuinfo) or "").split())
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def cpu_description(cpuinfo: Path | None = None) -> str:
    """"AMD EPYC (family 25 model 17), x86_64, avx512_bf16": the model and its generation, the architecture and the
    bf16 instructions, where known."""
    model, generation = cpu_model(cpuinfo), cpu_generation(cpuinfo)
    named = f"{model} ({generation})" if generation else model
    parts = [named, platform.machine(), cpu_bf16(cpuinfo)]
    return ", ".join(dict.fromkeys(filter(None, parts)))  # dict: the model may be the architecture itself


def machine_description(cpuinfo: Path | None = None) -> str:
    """The machine a measurement ran on: "AMD EPYC (family 25 model 17), x86_64, avx512_bf16, 2 CPUs, Linux 6.18.44"."""
    return f"{cpu_description(cpuinfo)}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
