"""The machine a record names: the CPU model, its generation and its bf16 instructions, read from /proc/cpuinfo,
not just "x86_64"; and all of it without torch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest
import torch

from glmc import machine
from glmc.machine import cpu_bf16, cpu_description, cpu_generation, cpu_model
from glmc.provenance import device_name

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
"""
EPYC = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
EPYC_AVX2 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n"
NO_GENERATION = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz\nflags\t\t: fpu avx2\n"


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return path
    return write


@pytest.mark.parametrize("text, model, generation, bf16", [
    (XEON, "Intel(R) Xeon(R) Platinum 8488C", "family 6 model 143", "amx_bf16"),  # AMX before the AVX-512 bf16 it has
    (EPYC, "AMD EPYC", "family 25 model 17", "avx512_bf16"),
    (EPYC_AVX2, "AMD EPYC", "family 25 model 1", None),  # the same model name, another generation, no native bf16
    (NO_GENERATION, "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", None, None),
])
def test_the_cpu_model_generation_and_bf16_instructions_come_from_cpuinfo(cpuinfo, text, model, generation, bf16):
    path = cpuinfo(text)
    assert (cpu_model(path), cpu_generation(path), cpu_bf16(path)) == (model, generation, bf16)
    named = f"{model} ({generation})" if generation else model
    assert cpu_description(path) == ", ".join(filter(None, [named, platform.machine(), bf16]))


def test_two_epyc_generations_are_told_apart(cpuinfo, tmp_path):
    avx512, avx2 = cpu_description(cpuinfo(EPYC)), cpu_description(cpuinfo(EPYC_AVX2))
    assert avx512 != avx2 and "AMD EPYC (family 25 model 1)" in avx2


def test_without_cpuinfo_the_architecture_is_named_once(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "processor", lambda: "")
    missing = tmp_path / "none"
    assert cpu_model(missing) == platform.machine() and cpu_bf16(missing) is None and cpu_generation(missing) is None
    assert cpu_description(missing) == platform.machine()


def test_a_cpu_device_is_named_by_its_model_and_threads(cpuinfo, monkeypatch):
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo(XEON))
    name = device_name(torch.device("cpu"))
    assert name == (f"cpu (Intel(R) Xeon(R) Platinum 8488C (family 6 model 143), {platform.machine()}, amx_bf16, "
                    f"{torch.get_num_threads()} threads)")
    assert "Intel(R) Xeon(R) Platinum 8488C (family 6 model 143)" in machine.machine_description()


def test_describing_the_machine_imports_no_torch():
    probe = "import sys, glmc.machine as m; m.machine_description(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def proc_stat_line(pid: int, name: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    """/proc/PID/stat as Linux writes it (fields 1-17 matter here): the name in brackets, then state and ppid."""
    return f"{pid} ({name}) S {ppid} 1 1 0 -1 4194304 100 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0\n"


def test_the_cpu_time_of_a_process_tree_and_of_the_machine_come_from_proc(tmp_path):
    tick = os.sysconf("SC_CLK_TCK")
    (tmp_path / "stat").write_text("cpu  100 5 50 9000 20 3 2 10 0 0\ncpu0 50 2 25 4500 10 1 1 5 0 0\n")
    assert machine.busy_cpu_seconds(tmp_path) == pytest.approx((100 + 5 + 50 + 3 + 2 + 10) / tick)  # idle, iowait out
    assert machine.busy_cpu_seconds(tmp_path, cpus={0}) == pytest.approx((50 + 2 + 25 + 1 + 1 + 5) / tick)  # its affinity
    assert machine.busy_cpu_seconds(tmp_path, cpus={0, 1}) is None  # no line for CPU 1
    processes = {10: ("glmc", 1, 100, 20, 7, 3), 11: ("pt_data_worker", 10, 30, 5, 0, 0),
                 12: ("a (tricky) name", 11, 4, 1, 0, 0), 13: ("someone else", 1, 500, 50, 0, 0)}
    for pid, fields in processes.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(proc_stat_line(pid, *fields))
    # the process, its worker and the worker's child, with the children each has seen end; not the unrelated one
    assert machine.own_cpu_seconds(tmp_path, pid=10) == pytest.approx((100 + 20 + 7 + 3 + 30 + 5 + 4 + 1) / tick)
    assert machine.own_cpu_seconds(tmp_path, pid=11) == pytest.approx((30 + 5 + 4 + 1) / tick)
    assert machine.busy_cpu_seconds(tmp_path / "nowhere") is None


@pytest.mark.skipif(not machine.busy_cpu_seconds(), reason="needs Linux's /proc/stat")
def test_other_work_counts_a_busy_stranger_and_not_a_busy_child():
    busy = "import time\nend = time.time() + 2.5\nwhile time.time() < end:\n    pass\n"
    orphan = f"import os\nif os.fork() == 0:\n    exec({busy!r})\n    os._exit(0)\n"  # its parent exits: not ours

    def share_beside(command: list[str]) -> float:
        process = subprocess.Popen(command)
        time.sleep(0.3)  # started and spinning
        window = machine.OtherWork.start()
        time.sleep(1.5)
        share = window.share()
        process.wait()
        return share

    stranger = share_beside([sys.executable, "-c", orphan])
    time.sleep(1.0)  # the orphan done
    child = share_beside([sys.executable, "-c", busy])
    cpus = len(machine.usable_cpus() or range(os.cpu_count() or 1))
    assert stranger - child > 0.5 / cpus, (stranger, child)  # one CPU of `cpus` busy all along: 1 / cpus
