"""The per-CPU predicates: what each CPU kind gets, without that CPU and without timing anything."""

from __future__ import annotations

import pytest

from fsl_lightning.run.cpu_features import CPUFeatures, bf16_training_is_fast, capped_by_isa, this_cpu

AVX2_EPYC = CPUFeatures("AMD EPYC (Zen 3)", avx2=True, avx512=False, avx512_bf16=False, amx_bf16=False)
AVX512_SKYLAKE = CPUFeatures("Intel Xeon (Skylake)", avx2=True, avx512=True, avx512_bf16=False, amx_bf16=False)
AVX512_BF16_EPYC = CPUFeatures("AMD EPYC (Zen 4)", avx2=True, avx512=True, avx512_bf16=True, amx_bf16=False)
AMX_XEON = CPUFeatures("Intel Xeon (Sapphire Rapids)", avx2=True, avx512=True, avx512_bf16=True, amx_bf16=True)
ARM = CPUFeatures("Apple M2", avx2=False, avx512=False, avx512_bf16=False, amx_bf16=False)


@pytest.mark.parametrize(
    "cpu, fast, units",
    [
        (AVX2_EPYC, False, "AVX2 (no AVX-512)"),
        (AVX512_SKYLAKE, False, "AVX-512 (no BF16 units)"),
        (AVX512_BF16_EPYC, True, "AVX-512 + AVX512-BF16 (no AMX)"),
        (AMX_XEON, True, "AVX-512 + AMX-BF16"),
        (ARM, False, "no AVX2"),
    ],
)
def test_bf16_training_is_the_default_only_on_cpus_with_bf16_units(cpu, fast, units):
    assert bf16_training_is_fast(cpu) is fast
    assert cpu.vector_units == units


@pytest.mark.parametrize(
    "cap, fast, avx512",
    [
        ("AVX2", False, False),
        ("avx512_core", False, True),
        ("AVX512_CORE_BF16", True, True),
        ("ALL", True, True),
        (None, True, True),
    ],
)
def test_a_onednn_isa_cap_is_the_cpu_the_kernels_see(cap, fast, avx512):
    """ONEDNN_MAX_CPU_ISA=AVX2 runs an AMX Xeon's kernels as on an AVX2-only CPU: the defaults follow the kernels."""
    capped = capped_by_isa(AMX_XEON, cap)
    assert bf16_training_is_fast(capped) is fast
    assert capped.avx512 is avx512
    assert (capped.isa_cap is not None) == (cap not in (None, "ALL"))
    if capped.isa_cap:
        assert f"ONEDNN_MAX_CPU_ISA={capped.isa_cap}" in capped.vector_units


def test_this_cpu_is_described_by_its_model_and_vector_units():
    cpu = this_cpu()
    assert cpu.model and cpu.model != "unknown CPU"
    assert cpu.model in cpu.description() and cpu.vector_units in cpu.description()
