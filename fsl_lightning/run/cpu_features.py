"""What this CPU's vector units can do: the one line every benchmark prints, and the predicates that choose the
per-CPU speed defaults.

The machines this project trains on change from day to day (a Xeon with AMX tiles, an AMD EPYC with AVX-512 and
its BF16 dot products, an EPYC with AVX2 only, Apple silicon), and a default that wins on one CPU can lose on
another. So a speed default that depends on the CPU is a predicate here over :class:`CPUFeatures`, testable for
every CPU kind without that CPU, and every figure in BENCHMARKS.md names the CPU it was measured on.

oneDNN's ``ONEDNN_MAX_CPU_ISA`` caps the instructions its kernels use (``AVX2`` makes an AVX-512 machine run the
kernels of an AVX2-only one); the features read here honour that cap, so the defaults follow the kernels that run.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) below AVX-512, and AVX-512 ones below its BF16 dot products and AMX tiles
_CAPS_WITHOUT_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}
_CAPS_WITHOUT_BF16 = _CAPS_WITHOUT_AVX512 | {"AVX512_CORE", "AVX512_CORE_VNNI"}
_CAPS_WITHOUT_AMX = _CAPS_WITHOUT_BF16 | {"AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16"}


@dataclass(frozen=True)
class CPUFeatures:
    """The CPU's model name and the vector units that decide which kernels are fast on it."""

    model: str
    avx2: bool
    avx512: bool
    avx512_bf16: bool  # VDPBF16PS: bf16 dot products at twice fp32's rate (Cooper Lake, Zen 4 and later)
    amx_bf16: bool  # AMX tiles: bf16 matrix products (Sapphire Rapids and later Xeons)
    isa_cap: str | None = None  # ONEDNN_MAX_CPU_ISA, when set

    @property
    def vector_units(self) -> str:
        """e.g. ``AVX-512 + AMX-BF16``, ``AVX-512 + AVX512-BF16``, ``AVX2`` (and the cap, when one is set)."""
        if self.amx_bf16:
            units = "AVX-512 + AMX-BF16"
        elif self.avx512_bf16:
            units = "AVX-512 + AVX512-BF16 (no AMX)"
        elif self.avx512:
            units = "AVX-512 (no BF16 units)"
        elif self.avx2:
            units = "AVX2 (no AVX-512)"
        else:
            units = "no AVX2"
        return f"{units}, capped by ONEDNN_MAX_CPU_ISA={self.isa_cap}" if self.isa_cap else units

    def description(self) -> str:
        """The CPU in one line, for benchmark headers: model, vector units, cores this process may use."""
        return f"{self.model}, {self.vector_units}, {len(os.sched_getaffinity(0))} cores available"


def bf16_training_is_fast(cpu: CPUFeatures) -> bool:
    """Whether bf16 autocast speeds up training steps on ``cpu``: where oneDNN has bf16 hardware to run on, AMX tiles
    or AVX-512's BF16 dot products. Measured on both kinds (BENCHMARKS.md, "CPU precision and kernels"): Conv4 60-way
    channels-last + bf16 runs about 3x fp32 on a Xeon with AMX and on an EPYC with AVX512-BF16. Elsewhere (AVX2 only,
    AVX-512 without BF16, ARM) bf16 is emulated by conversions and is no faster than fp32."""
    return cpu.amx_bf16 or cpu.avx512_bf16


@functools.cache
def this_cpu() -> CPUFeatures:
    """The features of the CPU this process runs on, capped by ``ONEDNN_MAX_CPU_ISA`` if it is set."""
    features = CPUFeatures(
        model=_model_name(),
        avx2=_torch_probe("_is_avx2_supported"),
        avx512=_torch_probe("_is_avx512_supported"),
        avx512_bf16=_torch_probe("_is_avx512_bf16_supported"),
        amx_bf16=_torch_probe("_is_amx_tile_supported"),
    )
    return capped_by_isa(features, os.environ.get("ONEDNN_MAX_CPU_ISA"))


def capped_by_isa(features: CPUFeatures, cap: str | None) -> CPUFeatures:
    """``features`` as oneDNN sees them under ``ONEDNN_MAX_CPU_ISA=cap`` (unchanged for ``None``, ``ALL``,
    ``DEFAULT``)."""
    name = (cap or "").strip().upper()
    if name in ("", "ALL", "DEFAULT"):
        return features
    return replace(
        features,
        avx512=features.avx512 and name not in _CAPS_WITHOUT_AVX512,
        avx512_bf16=features.avx512_bf16 and name not in _CAPS_WITHOUT_BF16,
        amx_bf16=features.amx_bf16 and name not in _CAPS_WITHOUT_AMX,
        isa_cap=name,
    )


def _torch_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private in torch 2.x: absent means unknown, so no
    return bool(probe and probe())


def _model_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"
