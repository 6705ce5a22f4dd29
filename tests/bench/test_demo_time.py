"""`bench/demo_time.py` names a native run's results file after the CPU kind: AMX apart from
AVX-512, although torch reports both as AVX512."""

from bench.demo_time import cpu_kind


def summary(capability: str, bf16: list[str]) -> dict:
    return {"capability": capability, "bf16_support": bf16}


def test_each_cpu_kind_keeps_its_own_file():
    assert cpu_kind(summary("AVX512", ["amx_bf16", "avx512_bf16"])) == "amx"
    assert cpu_kind(summary("AVX512", ["avx512_bf16"])) == "avx512"
    assert cpu_kind(summary("AVX2", [])) == "avx2"
