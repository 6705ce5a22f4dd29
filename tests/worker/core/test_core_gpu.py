"""CUDA checks of the core: same numbers as on the CPU, bf16 safety, and no host synchronization.

``torch.cuda.set_sync_debug_mode("error")`` makes any operation that waits for the device (an
``.item()``, a ``nonzero()``, a data-dependent shape) raise, which enforces the rule that core
never synchronizes: the caller reads the metrics once per step.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from keel_worker.core.advantages import compute_advantages
from keel_worker.core.aggregation import loss_normalizer
from keel_worker.core.diagnostics import (
    entropy_from_logits,
    mismatch_metrics,
    routing_disagreement,
)
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TIS5 = {"mode": "token_truncate", "cap": 5.0}
PPO = {"eps_low": 0.2, "eps_high": 0.27, "is_correction": TIS5}
HYPER = {
    "minirl": {
        "eps_low": 0.2,
        "eps_high": 0.27,
        "use_clip": True,
        "clip_anchor": "pi_old",
        "is_correction": TIS5,
        "is_scope": "train_infer",
        "length_norm": False,
        "loss_agg": "seq_mean_token_sum",
    },
    "reinforce": {"loss_agg": "seq_mean_token_sum"},
    "grpo": PPO | {"loss_agg": "seq_mean_token_mean"},
    "dr_grpo": PPO | {"loss_agg": "seq_mean_token_sum_norm"},
    "dapo": PPO | {"loss_agg": "token_mean"},
    "cispo": PPO | {"eps_low": 1.0, "loss_agg": "token_mean"},
    "gspo": PPO
    | {
        "is_correction": {"mode": "seq_mask", "lower": 0.2, "upper": 5.0},
        "loss_agg": "seq_mean_token_mean",
    },
    "gspo_token": PPO
    | {
        "is_correction": {"mode": "geo_mask", "lower": 0.5, "upper": 2.0, "token_cap": 3.0},
        "loss_agg": "seq_mean_token_mean",
    },
    "decoupled_ppo_tis": PPO
    | {
        "is_correction": {"mode": "token_mask", "lower": 0.5, "upper": 5.0},
        "loss_agg": "token_mean",
    },
    "dppo_tv": {
        "divergence": "tv",
        "delta_low": 0.15,
        "delta_high": 0.15,
        "is_cap": 10.0,
        "loss_agg": "token_mean",
    },
    "dppo_kl": {
        "divergence": "kl",
        "delta_low": 0.05,
        "delta_high": 0.05,
        "is_cap": 10.0,
        "loss_agg": "seq_mean_token_sum",
    },
}


@contextlib.contextmanager
def no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _tensors(seed: int, rows: int = 16, tokens: int = 64):
    gen = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(rows, tokens, generator=gen, dtype=torch.float64) * 3 - 0.01
    old = (logprobs + 0.2 * torch.randn(rows, tokens, generator=gen, dtype=torch.float64)).clamp(
        max=0
    )
    rollout = (old + 0.2 * torch.randn(rows, tokens, generator=gen, dtype=torch.float64)).clamp(
        max=0
    )
    lengths = torch.randint(1, tokens + 1, (rows,), generator=gen)
    mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)
    advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
    return logprobs, old, rollout, advantages, mask


def _run(name, tensors, *, device, dtype, sync_check):
    logprobs, old, rollout, advantages, mask = (t.to(device) for t in tensors)
    leaf = logprobs.to(dtype).detach().requires_grad_(True)
    batch = PolicyBatch(leaf, old.to(dtype), rollout.to(dtype), advantages.to(dtype), mask)
    hyper = HYPER[name]
    guard = no_host_sync() if sync_check else contextlib.nullcontext()
    with guard:
        normalizer = loss_normalizer(hyper["loss_agg"], mask_B_T=mask, constant=64.0)
        out = OBJECTIVES[name](batch, normalizer=normalizer, **hyper)
        out.loss.backward()
    return out, leaf.grad


@pytest.mark.parametrize("name", sorted(HYPER))
def test_objectives_on_cuda_match_cpu_and_never_synchronize(name):
    tensors = _tensors(0)
    cpu_out, cpu_grad = _run(name, tensors, device="cpu", dtype=torch.float64, sync_check=False)
    gpu_out, gpu_grad = _run(name, tensors, device="cuda", dtype=torch.float32, sync_check=True)
    torch.testing.assert_close(gpu_out.loss.double().cpu(), cpu_out.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_grad.double().cpu(), cpu_grad, rtol=1e-4, atol=1e-6)
    for key, value in gpu_out.metrics.items():
        assert value.device.type == "cuda" and not value.requires_grad, key


@pytest.mark.parametrize("name", sorted(HYPER))
def test_objectives_in_bfloat16_stay_finite(name):
    out, grad = _run(name, _tensors(1), device="cuda", dtype=torch.bfloat16, sync_check=True)
    assert torch.isfinite(out.loss).item()
    assert torch.isfinite(grad).all().item()


def test_diagnostics_advantages_and_routing_never_synchronize():
    _, old, rollout, _, mask = (t.cuda() for t in _tensors(2))
    logits = torch.randn(16, 64, 1000, device="cuda", dtype=torch.bfloat16)
    routes_a = torch.randint(0, 8, (16, 64, 4, 2), device="cuda", dtype=torch.int16)
    routes_b = routes_a.clone()
    routes_b[:, ::3, 1] = 7 - routes_b[:, ::3, 1]
    rewards = torch.randint(0, 2, (4, 4), device="cuda").float()
    with no_host_sync():
        mismatch = mismatch_metrics(old, rollout, mask)
        entropy_sum, count = entropy_from_logits(logits, mask, chunk_size=256)
        routing = routing_disagreement(routes_a, routes_b, mask)
        for mode in ("group_mean", "mean_std", "rloo"):
            compute_advantages(rewards, mode=mode)
    assert mismatch["mismatch/kl_k3"].item() >= 0
    reference = torch.distributions.Categorical(logits=logits[mask].float()).entropy().sum()
    torch.testing.assert_close(entropy_sum, reference, rtol=1e-4, atol=1e-2)
    assert count.item() == mask.sum().item()
    assert 0 < routing["any_layer"].item() <= 1


def test_entropy_memory_stays_bounded_by_the_chunk():
    tokens, vocab, chunk = 4096, 65536, 256
    logits = torch.randn(1, tokens, vocab, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(1, tokens, dtype=torch.bool, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    entropy_from_logits(logits, mask, chunk_size=chunk)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    chunk_bytes = chunk * vocab * 4
    # A few float32 temporaries of one chunk, never a float32 copy of all logits (1 GiB here).
    assert extra < 8 * chunk_bytes, (extra, chunk_bytes)
