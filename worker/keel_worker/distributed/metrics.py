"""The step's per-rank metrics reduced so that every rank (rank 0 reports) holds one process's.

A data-parallel step keeps two sinks: the step's own, whose entries every rank computes the same
way from the same batch (rollout statistics, advantages, the global grad norm, the mismatch), and
a shard sink with the entries of the micro-batches this rank trained on (objective metrics, loss,
entropy, routing disagreement). `reduce_shard` sums the shard sinks' numerators and denominators
over ranks (max / min for extremes) and adds the totals to the step's sink: a ratio metric is then
Σ numerators / Σ denominators over all the micro-batches, as one process computes it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from keel_worker.distributed.group import DataParallel
from keel_worker.training.metrics import MetricSink


def reduce_shard(shard: MetricSink, into: MetricSink, dp: DataParallel) -> None:
    """Add `shard`'s totals, reduced over every rank, to `into` (collective)."""
    local = shard.totals()
    kinds: list[dict[str, str | None] | None] = [None] * dp.world_size
    dist.all_gather_object(kinds, {name: extreme for name, (_, _, extreme) in local.items()})
    names: dict[str, str | None] = {}
    for ranks_kinds in kinds:
        names.update(ranks_kinds or {})
    if not names:
        return
    order = sorted(names)
    device = dp.device
    sums = torch.zeros((2, len(order)), dtype=torch.float32, device=device)
    highs = torch.full((len(order),), -torch.inf, dtype=torch.float32, device=device)
    for i, name in enumerate(order):
        if name not in local:
            continue
        num, den, extreme = local[name]
        if extreme == "max":
            highs[i] = num
        elif extreme == "min":
            highs[i] = -num  # the min is minus the max of the negated values
        else:
            sums[0, i], sums[1, i] = num, den
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(highs, op=dist.ReduceOp.MAX)
    for i, name in enumerate(order):
        extreme = names[name]
        if extreme == "max":
            into.add_total(name, highs[i], torch.zeros(()), "max")
        elif extreme == "min":
            into.add_total(name, -highs[i], torch.zeros(()), "min")
        else:
            into.add_total(name, sums[0, i], sums[1, i], None)
