"""The machine a measurement ran on, as records name it: the CPU model, generation and bf16 instructions.

A speed figure means little without the processor it was measured on: two 2-core machines that
both say x86_64 can differ by nearly 2x in one training step, as AMX and AVX-512 bf16 do, and by
4x more where a CPU has no native bf16 at all. So every record that carries a time (a run's sessions
and summary, `glmc bench`, the benchmarks) names the CPU model, its family and model numbers and the
bf16 instructions it has, not only the architecture. The family and model numbers matter because a
virtual machine's "model name" can be just "AMD EPYC" for several generations of it.

A speed figure also means little if other work shared the CPUs while it was taken: `OtherWork`
measures how much of the CPU time of the CPUs this process may use (all of the machine's, or a
container's or batch job's part of them) went to anything but this process and its descendants
(other processes, or, on a virtual machine, the host's other guests) during a timed window.

Nothing here imports torch, so a tool that only looks at the machine (a supervisor that sits
beside a long training run for hours, say) stays light.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
PROC = Path("/proc")
BUSY_SHARE = 0.1  # of the CPU time, taken by other work during a timing: enough to slow what was timed
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


def slowed_by_others(share: float | None) -> bool:
    """Whether other work took enough of the CPU time (`OtherWork.share`) to slow what was timed."""
    return share is not None and share >= BUSY_SHARE


def usable_cpus() -> set[int] | None:
    """The CPUs this process may run on (its affinity: a container's or a batch job's share of a larger machine),
    or None where the system cannot say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def busy_cpu_seconds(proc: Path = PROC, cpus: set[int] | None = None) -> float | None:
    """CPU seconds the CPUs numbered `cpus` (default: all) have spent on any work since the machine booted, summed,
    time the hypervisor gave to other guests included (Linux's /proc/stat); None where there is no such file."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {"cpu"} if cpus is None else {f"cpu{number}" for number in cpus}
    ticks = 0
    for fields in (line.split() for line in lines):
        if fields and fields[0] in wanted and len(fields) >= 9:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
            ticks += user + nice + system + irq + softirq + steal
            wanted.discard(fields[0])
    return None if wanted else ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(proc: Path = PROC, pid: int | None = None) -> float:
    """CPU seconds this process (or `pid`) and its descendants have used, those that ended included (a data loader's
    worker processes are its work too); this process's time alone where /proc cannot say."""
    pid = os.getpid() if pid is None else pid
    ticks, parents = {}, {}
    for entry in proc.glob("[0-9]*/stat"):
        try:
            after_name = entry.read_text().rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
        except (OSError, IndexError):
            continue  # a process that ended while we looked
        number = int(entry.parent.name)
        parents[number] = int(after_name[1])
        ticks[number] = sum(int(value) for value in after_name[11:15])  # utime, stime, and its children's that ended
    if pid not in ticks:
        return time.process_time()
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier and child not in tree]
        tree.update(frontier)
    return sum(ticks[number] for number in tree) / os.sysconf("SC_CLK_TCK")


@dataclass
class OtherWork:
    """The share of the CPU time of the CPUs this process may use that went to other work from `start()` to
    `share()`: 0.5 on 2 CPUs where another process kept one busy all along. Own work is the process `pid` (default
    this one) and its descendants. None where the system cannot say (not Linux)."""

    proc: Path
    pid: int | None
    cpus: set[int] | None  # usable_cpus(), or None: the whole machine
    busy: float | None  # busy_cpu_seconds at the start
    own: float  # own_cpu_seconds at the start
    wall: float  # time.perf_counter at the start

    @classmethod
    def start(cls, pid: int | None = None, proc: Path = PROC, cpus: set[int] | None = None) -> OtherWork:
        cpus = usable_cpus() if cpus is None else cpus
        return cls(proc, pid, cpus, busy_cpu_seconds(proc, cpus), own_cpu_seconds(proc, pid), time.perf_counter())

    def share(self) -> float | None:
        busy, own, wall = busy_cpu_seconds(self.proc, self.cpus), own_cpu_seconds(self.proc, self.pid), time.perf_counter()
        if busy is None or self.busy is None or wall <= self.wall:
            return None
        others = (busy - self.busy) - (own - self.own)
        count = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
        return min(1.0, max(0.0, others / ((wall - self.wall) * count)))
