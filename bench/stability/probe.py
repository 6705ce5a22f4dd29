"""Size of the training–inference discrepancy of each cold start at each rollout precision.

For one cold start and one engine precision: sample `prompts × n` responses at temperature 1 from
the engine (μ_old, with its routes e^μ), rescore them with the fp32 trainer forward (π_old) both
with natural routing (e^π) and replaying the engine's routes (R3), and report (paper-spec §10):

- KL(μ_old‖π_old) by the k1 estimator mean_t[log μ − log π_old] (the paper's plotted quantity) and
  by k3 mean_t[exp(Δ) − Δ − 1], Δ = log π_old − log μ (non-negative per token);
- |Δp| = |π_old(y_t) − μ_old(y_t)|, mean and max over response tokens;
- routing disagreement: the fraction of (token, layer) top-k sets that differ between engine and
  trainer, and of tokens with a difference in at least one layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.stability import task
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model
from keel_worker.engines.routing_replay import RoutingReplay
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward

PRECISIONS = ("fp32", "bf16", "fp8")


def _token_stats(old_N: torch.Tensor, rollout_N: torch.Tensor) -> dict[str, float]:
    delta_N = old_N - rollout_N
    prob_diff_N = (old_N.exp() - rollout_N.exp()).abs()
    return {
        "kl_k1": float((-delta_N).mean()),
        "kl_k3": float((delta_N.exp() - delta_N - 1).mean()),
        "prob_diff_mean": float(prob_diff_N.mean()),
        "prob_diff_max": float(prob_diff_N.max()),
    }


def _routing_stats(engine_B_S_L_K, train_B_S_L_K, attention_B_S) -> dict[str, float]:
    a, _ = engine_B_S_L_K.long().sort(-1)
    b, _ = train_B_S_L_K.long().sort(-1)
    differ_B_S_L = (a != b).any(-1)[attention_B_S.bool()]
    return {
        "routing_layer_frac": float(differ_B_S_L.float().mean()),
        "routing_any_frac": float(differ_B_S_L.any(-1).float().mean()),
    }


@torch.no_grad()
def measure(
    model_dir: Path, precision: str, *, prompts: int = 64, n: int = 8, seed: int = 0
) -> dict[str, float]:
    """Discrepancy statistics of the cold start in `model_dir` under an engine at `precision`."""
    loaded = load_model(str(model_dir), cache_dir=model_dir.parent / "models")
    model, tokenizer = loaded.model, loaded.tokenizer
    engine = HFEngine(model, tokenizer, precision=precision)
    problems = task.rl_pool()[:prompts]
    batch = engine.generate(
        [encode_prompt(tokenizer, p.prompt) for p in problems],
        n=n, max_new_tokens=6, temperature=1.0, top_p=1.0, seed=seed,
    )
    forward = PolicyForward(
        model, temperature=1.0, bf16_autocast=False, replay=RoutingReplay(model.get_decoder())
    )
    mb = make_micro_batch(
        list(range(len(batch))),
        prompt_ids=batch.prompt_ids,
        response_ids=batch.response_ids,
        rollout_logprobs=batch.rollout_logprobs,
        advantages_PG=torch.zeros(len(batch)),
        routes=batch.routes,
        pad_id=tokenizer.pad_token_id,
    )
    natural = forward(mb)
    replayed = forward(mb, replay_routes_B_S_L_K=mb.routes_B_S_L_K)
    mask_B_T = mb.mask_B_T
    rollout_N = mb.rollout_logprobs_B_T[mask_B_T]
    stats = {"precision": precision, "tokens": int(mask_B_T.sum())}
    stats |= _token_stats(natural.logprobs_B_T[mask_B_T], rollout_N)
    stats |= {
        f"r3_{k}": v for k, v in _token_stats(replayed.logprobs_B_T[mask_B_T], rollout_N).items()
    }
    stats |= _routing_stats(
        mb.routes_B_S_L_K, natural.natural_routes_B_S_L_K, mb.attention_mask_B_S
    )
    return stats
