"""How close keel's work comes to this machine's limits, measured in the
calling process so that the limits and the work share one machine state:

- `gemm_peak`: the best GEMM rate of a dtype over the shapes the model's linear layers run at in
  a training micro-batch (tokens × hidden @ hidden × out) and two squares; the compute roof.
- `memory_bandwidth`: GB/s of a large tensor copy (read + write), the roof of a decode step,
  which reads every weight once whatever the batch.
- `train_forward_backward`: keel's training forward (`PolicyForward`, as the step runs it) and
  its backward on one micro-batch shaped like the step's, timed after a warm-up; its FLOPs are
  counted by torch's `FlopCounterMode` on the executed ops (so prompt sharing and the LM head on
  response tokens only are counted as run, not as a formula would assume).

The step benchmark (`bench/step_time.py`) calls these after its measured steps.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward

SQUARES = (1024, 2048)
COPY_BYTES = 512 * 2**20


def _rate(fn, flops: float, repeats: int = 5) -> float:
    """FLOP/s of `fn` (best of `repeats` after one warm-up call)."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return flops / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_peak(
    dtype: torch.dtype, shapes: list[tuple[int, int, int]], squares: tuple[int, ...] = SQUARES
) -> dict:
    """GFLOP/s per (m, k, n) shape and their best, for `dtype` on the CPU."""
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for m, k, n in [*shapes, *((s, s, s) for s in squares)]:
        a = torch.randn(m, k, generator=generator).to(dtype)
        b = torch.randn(k, n, generator=generator).to(dtype)
        rates[f"{m}x{k}x{n}"] = _rate(lambda a=a, b=b: a @ b, 2.0 * m * k * n) / 1e9
    return {"gflops_by_shape": rates, "peak_gflops": max(rates.values())}


def memory_bandwidth(nbytes: int = COPY_BYTES) -> float:
    """GB/s of copying `nbytes` (bytes read + bytes written), best of five; far larger than
    the caches by default."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    return _rate(lambda: dst.copy_(src), 2.0 * nbytes) / 1e9


def model_gemm_shapes(model, tokens: int) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of each distinct `nn.Linear` shape of the model (the LM head included)."""
    shapes = {
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    }
    return [(tokens, k, n) for k, n in sorted(shapes)]


def train_forward_backward(
    model,
    prompts: list[list[int]],
    *,
    group_size: int,
    response_len: int,
    bf16: bool,
    repeats: int = 3,
) -> dict:
    """Time and count keel's training forward + backward on `len(prompts)` × `group_size`
    responses of `response_len` random tokens (one micro-batch, as the step builds it)."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt_ids = [p for p in prompts for _ in range(group_size)]
    response_ids = [
        torch.randint(vocab, (response_len,), generator=generator).tolist() for _ in prompt_ids
    ]
    rows = list(range(len(prompt_ids)))
    mb = make_micro_batch(
        rows,
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        rollout_logprobs=[torch.zeros(response_len) for _ in rows],
        advantages_PG=torch.ones(len(rows)),
        routes=None,
        pad_id=0,
    )
    forward = PolicyForward(model, temperature=1.0, bf16=bf16, replay=None)

    def fwd_bwd() -> None:
        forward(mb).logprobs_B_T.sum().backward()
        model.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        fwd_bwd()
    flops = float(counter.get_total_flops())
    seconds = statistics.median(_timed(fwd_bwd) for _ in range(repeats))
    return {
        "rows": len(rows),
        "prompt_tokens_each": [len(p) for p in prompts],
        "response_len": response_len,
        "input_tokens": mb.num_tokens,
        "flops": flops,
        "median_s": seconds,
        "gflops": flops / seconds / 1e9,
    }
