"""What one training step reports besides the objective's own metrics, each added to the step's
`MetricSink` (one device→host transfer at the end of the step):

    rollout_metrics     reward/*, groups/*, response/* of the step's rollouts and their scores
    old_policy_metrics  train/entropy of π_old, and routing/infer_vs_train_* (e^μ_old, the
                        engine's routes, vs e^π_old, the trainer's natural choice at θ_old)
    routing_drift       routing/old_vs_current_*: e^π_old vs the natural routes of the θ that
                        updates mini-batches 2..N (policy staleness in routing)
    mismatch            mismatch/*: the training–inference mismatch of the kept responses,
                        π_old vs μ_old (`core.diagnostics`, docs/concepts/algorithm.md §10.3)

Token statistics count the trained (sampled) tokens only: a multi-turn sequence's context tokens
(`RolloutBatch.trained_masks`) are in none of the response lengths, the entropy or the mismatch.

Routing disagreement is a share of (token, layer) pairs whose top-k expert set differs, per MoE
layer (`_L<i>`), at any layer (`_any`) and on average (`_mean`). It covers every token fed to the
model, prompt and context tokens included: each of them is routed, and replay replays it.
"""

from __future__ import annotations

import torch

from keel.types import metric_names as metric
from keel_worker.core.diagnostics import mismatch_metrics, routing_disagreement
from keel_worker.engines.base import RolloutBatch
from keel_worker.training.batching import MicroBatch, gather_rows, trained_mask
from keel_worker.training.forward import ForwardOutput
from keel_worker.training.metrics import MetricSink
from keel_worker.training.replay import OldPolicy
from keel_worker.training.scoring import ScoredGroups


def rollout_metrics(
    sink: MetricSink, batch: RolloutBatch, rewards: list, groups: ScoredGroups
) -> None:
    scored = [r for r in rewards if r is not None]
    lengths = batch.sampled_lengths()
    sink.add_float(metric.REWARD_MEAN, sum(scored) / len(scored) if scored else float("nan"))
    sink.add_float(metric.REWARD_MISSING, float(len(rewards) - len(scored)))
    sink.add_float(metric.GROUPS_DROPPED, float(groups.dropped))
    sink.add_float(metric.GROUPS_PARTIAL, float(len(groups.partial)))
    sink.add_float(metric.RESPONSE_LENGTH_MEAN, sum(lengths) / len(lengths))
    sink.add_float(metric.RESPONSE_LENGTH_MAX, float(max(lengths)))
    truncated = sum(f == "length" for f in batch.finish_reasons)
    sink.add_float(metric.RESPONSE_TRUNCATION_RATE, truncated / len(lengths))


def old_policy_metrics(sink: MetricSink, mb: MicroBatch, out: ForwardOutput) -> None:
    """Of a forward at θ = θ_old (the π_old recompute, or mini-batch 1's update)."""
    sink.add(metric.TRAIN_ENTROPY, out.entropy_sum, reduce="ratio", denom=mb.mask_B_T.sum())
    if out.natural_routes_B_S_L_K is not None and mb.routes_B_S_L_K is not None:
        _add_disagreement(
            sink, metric.ROUTING_INFER_VS_TRAIN, mb.routes_B_S_L_K, out.natural_routes_B_S_L_K, mb
        )


def routing_drift(sink: MetricSink, mb: MicroBatch, out: ForwardOutput, old: OldPolicy) -> None:
    """Of an update forward of mini-batches 2..N (skipped for rows π_old has no routes of)."""
    old_routes_B_S_L_K = old.routes_of(mb)
    if old_routes_B_S_L_K is None:
        return
    _add_disagreement(
        sink, metric.ROUTING_OLD_VS_CURRENT, old_routes_B_S_L_K, out.natural_routes_B_S_L_K, mb
    )


def mismatch(sink: MetricSink, rows: list[int], batch: RolloutBatch, old: OldPolicy) -> None:
    """Of the kept responses `rows`, once every row has its log π_old."""
    width = max(1, *(len(batch.response_ids[r]) for r in rows))
    old_B_T = gather_rows(old.logprobs, rows, width)
    rollout_B_T = gather_rows(dict(enumerate(batch.rollout_logprobs)), rows, width)
    mask_B_T = trained_mask(rows, batch.response_ids, batch.trained_masks, width)
    for name, value in mismatch_metrics(old_B_T, rollout_B_T, mask_B_T).items():
        sink.add(name, value)


def _add_disagreement(
    sink: MetricSink, prefix: str, a: torch.Tensor, b: torch.Tensor, mb: MicroBatch
) -> None:
    mask_B_S = mb.attention_mask_B_S.bool()
    rates = routing_disagreement(a.long(), b.long(), mask_B_S)
    weight = mask_B_S.sum()
    by_name = {
        metric.per_layer(prefix, layer): rate
        for layer, rate in enumerate(rates["per_layer_L"].unbind(0))
    }
    by_name[metric.any_layer(prefix)] = rates["any_layer"]
    by_name[metric.layer_mean(prefix)] = rates["mean"]
    for name, rate in by_name.items():
        sink.add(name, rate, reduce="ratio", denom=weight, weighted=True)
