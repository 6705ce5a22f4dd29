"""What a device computes natively, measured once per process: the input to the compute dtype.

Machines of the same kind differ: one CPU has AMX (bf16 GEMMs 6–9× faster than fp32), another
has AVX2 only, where torch's bf16 matmul is an emulated path 5–60× *slower* than fp32
(`environment.md`). `device_profile(device)` reads what the device advertises (the CPU's bf16
flags and torch's CPU capability, or the CUDA device's name and bf16 support) and times a short
square GEMM in each dtype; bf16 counts as native when the device advertises it AND the measured
bf16 rate is at least the fp32 rate. Callers compute in bf16 only there; elsewhere they compute in
fp32 on values rounded to bf16 (`engines.precision`), so the numerics a precision stands for stay
real while the work runs at the machine's fastest rate.

The profile is cached per process and device (`functools.cache`): a worker pool process runs one
job, so each job measures once, at its start.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GEMM_SIZE = 256  # square: big enough to be compute-bound, small enough for an emulated bf16 path
GEMM_BUDGET_S = 0.05  # per dtype, after one warm-up product
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceProfile:
    """One device's native arithmetic as advertised and as measured in this process."""

    device: str  # "cpu" or "cuda:<index>"
    name: str  # CPU model name or GPU name
    capability: str  # torch's CPU capability (AVX2, AVX512, ...) or the CUDA compute capability
    # What the device advertises for bf16: its CPU flags among BF16_CPU_FLAGS, or ("cuda",) for a
    # CUDA device that supports bf16; empty when it advertises nothing.
    bf16_support: tuple[str, ...]
    gemm_size: int
    gemm_gflops: dict[str, float]  # measured rate of a GEMM_SIZE² product per dtype
    bf16_native: bool

    def to_json(self) -> dict:
        return {**asdict(self), "bf16_support": list(self.bf16_support)}


@functools.cache
def device_profile(device: str = "cpu") -> DeviceProfile:
    """The profile of `device` ("cpu", "cuda", "cuda:1"), measured on first use."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
        major, minor = torch.cuda.get_device_capability(dev)
        name, capability = torch.cuda.get_device_name(dev), f"sm_{major}{minor}"
        flags = ("cuda",) if torch.cuda.is_bf16_supported() else ()
    else:
        name, capability, flags = cpu_model_name(), torch.backends.cpu.get_cpu_capability(), ()
        flags = tuple(f for f in BF16_CPU_FLAGS if f in cpu_flags())
    rates = {label: gemm_gflops(dtype, dev) for label, dtype in _DTYPES.items()}
    native = bool(flags) and rates["bf16"] >= rates["fp32"]
    return DeviceProfile(str(dev), name, capability, flags, GEMM_SIZE, rates, native)


def gemm_gflops(
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    *,
    size: int = GEMM_SIZE,
    budget_s: float = GEMM_BUDGET_S,
) -> float:
    """GFLOP/s of `size`×`size` @ `size`×`size` products (2·size³ FLOPs each) over `budget_s`."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    _sync(device)
    a @ b  # warm-up: kernel selection, thread pool start
    _sync(device)
    runs, started = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        _sync(device)
        elapsed = time.perf_counter() - started
        if elapsed >= budget_s:
            return round(2 * size**3 * runs / elapsed / 1e9, 2)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text(errors="replace") if path.exists() else ""
