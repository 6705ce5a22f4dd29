"""Size of the training–inference discrepancy of a cold start under each rollout dial.

For one cold start and one `Dial` (engine precision, sampler truncation): sample `prompts × n`
responses at temperature 1 from the engine (μ_old, with its routes e^μ), rescore them with the
fp32 trainer forward (π_old) both with natural routing (e^π) and replaying the engine's routes
(R3), and report (docs/concepts/algorithm.md §10):

- KL(μ_old‖π_old) by the k1 estimator mean_t[log μ − log π_old] (the paper's plotted quantity) and
  by k3 mean_t[exp(Δ) − Δ − 1], Δ = log π_old − log μ (non-negative per token);
- |Δp| = |π_old(y_t) − μ_old(y_t)|, mean and max over response tokens;
- the per-sequence log ratio Σ_t log(π_old/μ_old) (the sequence-level IS weight's log,
  docs/concepts/algorithm.md §1.3):
  mean, 5th and 95th percentiles and the mean |·|, and the TIS-cap hit rate: the share of tokens
  with π_old/μ_old above MiniRL's cap of 5 (or below 1/5);
- sampler truncation: μ is reported from the raw distribution while top-p/top-k draw from a
  truncated one q; `sampling_kl` = mean_t[log q(y_t) − log μ(y_t)] = mean_t[−log kept mass], a
  mismatch that no logprob-based IS weight sees (0 without truncation);
- routing disagreement: per MoE layer, the share of tokens whose top-k set differs between engine
  and trainer (`routing_L<l>`, the maximum over layers as `routing_layer_max`), the share of
  (token, layer) pairs (`routing_layer_frac`) and of tokens with a difference in any layer.

`ladder_job` runs the same measurement for the mismatch ladder's rung candidates
(`suites.RUNG_CANDIDATES`) on the committed cold starts, and also on a long-answer slice of the RL
pool (problems of at least `LONG_MIN_DIGITS` digits, init labelled `<init>@long`): the rows of
`stress/ladder.csv`, from which `reruns.chosen_rungs` picks the reruns' rungs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.routing_replay import RoutingReplay
from keel_worker.engines.sampling import truncate
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward
from research.stability.coldstart import cpu_kind, load_policy

TIS_CAP = 5.0  # MiniRL's default truncation (keel.types.algorithm.TokenTruncate)
LONG_MIN_DIGITS = 48  # the long-answer slice: answers of 49–101 tokens (EOS included)


def _token_stats(old_N: torch.Tensor, rollout_N: torch.Tensor) -> dict[str, float]:
    delta_N = old_N - rollout_N
    prob_diff_N = (old_N.exp() - rollout_N.exp()).abs()
    return {
        "kl_k1": float((-delta_N).mean()),
        "kl_k3": float((delta_N.exp() - delta_N - 1).mean()),
        "prob_diff_mean": float(prob_diff_N.mean()),
        "prob_diff_max": float(prob_diff_N.max()),
    }


def _sequence_stats(old_B_T, rollout_B_T, mask_B_T) -> dict[str, float]:
    log_ratio_B_T = (old_B_T - rollout_B_T) * mask_B_T
    seq_B = log_ratio_B_T.sum(-1)
    capped_B_T = (log_ratio_B_T.abs() > torch.log(torch.tensor(TIS_CAP))) & mask_B_T.bool()
    return {
        "seq_log_ratio_mean": float(seq_B.mean()),
        "seq_log_ratio_abs_mean": float(seq_B.abs().mean()),
        "seq_log_ratio_p05": float(seq_B.quantile(0.05)),
        "seq_log_ratio_p95": float(seq_B.quantile(0.95)),
        "tis_cap_hit_frac": float(capped_B_T.sum() / mask_B_T.sum()),
    }


def _routing_stats(engine_B_S_L_K, train_B_S_L_K, attention_B_S) -> dict[str, float]:
    a, _ = engine_B_S_L_K.long().sort(-1)
    b, _ = train_B_S_L_K.long().sort(-1)
    differ_N_L = (a != b).any(-1)[attention_B_S.bool()]
    per_layer_L = differ_N_L.float().mean(0)
    stats = {f"routing_L{layer}": float(v) for layer, v in enumerate(per_layer_L)}
    return stats | {
        "routing_layer_max": float(per_layer_L.max()),
        "routing_layer_frac": float(differ_N_L.float().mean()),
        "routing_any_frac": float(differ_N_L.any(-1).float().mean()),
    }


def _sampling_kl(engine: HFEngine, mb, dial) -> float:
    """mean_t[−log kept mass] of the sampler's truncation at T = 1, under the engine's own
    distribution μ (the one the sampler truncates)."""
    if dial.top_p >= 1.0 and dial.top_k == 0:
        return 0.0
    logits_B_S_V = engine.model(
        input_ids=mb.input_ids_B_S, attention_mask=mb.attention_mask_B_S, use_cache=False
    ).logits
    index_B_T_V = mb.positions_B_T[..., None].expand(-1, -1, logits_B_S_V.shape[-1])
    logits_N_V = logits_B_S_V.gather(1, index_B_T_V)[mb.mask_B_T.bool()].float()
    kept_N = truncate(torch.softmax(logits_N_V, dim=-1), top_p=dial.top_p, top_k=dial.top_k)
    return float((-kept_N.sum(-1).log()).mean())


@torch.no_grad()
def measure(
    suite,
    model_dir: Path,
    dial,
    *,
    max_new_tokens: int,
    prompts: int = 64,
    n: int = 4,
    seed: int = 0,
    long: bool = False,
):
    """Discrepancy statistics of the cold start in `model_dir` under the engine `dial` (on the
    first `prompts` RL-pool problems, or with `long` the first ones of `LONG_MIN_DIGITS` digits
    or more)."""
    model, tokenizer = load_policy(str(model_dir), cache_dir=model_dir.parent)
    engine = HFEngine(model, tokenizer, precision=dial.precision)
    pool = suite.task.rl_pool()
    if long:
        pool = [p for p in pool if len(p.digits) >= LONG_MIN_DIGITS]
    problems = pool[:prompts]
    batch = engine.generate(
        [encode_prompt(tokenizer, p.prompt) for p in problems],
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=dial.top_p,
        top_k=dial.top_k,
        seed=seed,
    )
    forward = PolicyForward(
        model, temperature=1.0, bf16=False, replay=RoutingReplay(model.get_decoder())
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
    lengths = [len(r) for r in batch.response_ids]
    stats = {
        "dial": dial.name,
        "tokens": int(mask_B_T.sum()),
        "response_len_mean": sum(lengths) / len(lengths),
        "response_len_max": max(lengths),
    }
    stats |= _token_stats(natural.logprobs_B_T[mask_B_T], rollout_N)
    stats |= _sequence_stats(natural.logprobs_B_T, mb.rollout_logprobs_B_T, mask_B_T)
    stats["sampling_kl"] = _sampling_kl(engine, mb, dial)
    stats |= {
        f"r3_{k}": v for k, v in _token_stats(replayed.logprobs_B_T[mask_B_T], rollout_N).items()
    }
    stats |= _routing_stats(
        mb.routes_B_S_L_K, natural.natural_routes_B_S_L_K, mb.attention_mask_B_S
    )
    return stats


def ladder_job(suite, init: str, path: Path, dial, *, long: bool, **budget) -> dict:
    """One row of `stress/ladder.csv`: `measure` of `dial` on the cold start `init` (its
    long-answer slice when `long`, init labelled `<init>@long`), with the CPU and the budget."""
    stats = measure(suite, path, dial, long=long, **budget)
    label = f"{init}@long" if long else init
    return {"init": label, **stats, **budget, "cpu": cpu_kind()}
