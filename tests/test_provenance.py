"""The machine a record names: the CPU model and its bf16 instructions, read from /proc/cpuinfo, not just "x86_64"."""

from __future__ import annotations

import platform

import pytest
import torch

from glmc import provenance
from glmc.provenance import cpu_bf16, cpu_description, cpu_model, device_name

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
"""
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz\nflags\t\t: fpu avx2\n"


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return path
    return write


@pytest.mark.parametrize("text, model, bf16", [
    (XEON, "Intel(R) Xeon(R) Platinum 8488C", "amx_bf16"),  # AMX named before the AVX-512 bf16 it also has
    (EPYC, "AMD EPYC", "avx512_bf16"),
    (OLD, "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", None),
])
def test_the_cpu_model_and_its_bf16_instructions_come_from_cpuinfo(cpuinfo, text, model, bf16):
    path = cpuinfo(text)
    assert cpu_model(path) == model and cpu_bf16(path) == bf16
    assert cpu_description(path) == ", ".join(filter(None, [model, platform.machine(), bf16]))


def test_without_cpuinfo_the_architecture_is_named_once(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "processor", lambda: "")
    missing = tmp_path / "none"
    assert cpu_model(missing) == platform.machine() and cpu_bf16(missing) is None
    assert cpu_description(missing) == platform.machine()


def test_a_cpu_device_is_named_by_its_model_and_threads(cpuinfo, monkeypatch):
    monkeypatch.setattr(provenance, "CPUINFO", cpuinfo(XEON))
    name = device_name(torch.device("cpu"))
    assert name == f"cpu (Intel(R) Xeon(R) Platinum 8488C, {platform.machine()}, amx_bf16, {torch.get_num_threads()} threads)"
    assert "Intel(R) Xeon(R) Platinum 8488C" in provenance.machine_description()
