"""The bookkeeping under a data-parallel step, without processes: how micro-batches are dealt to
ranks, and that a sink's per-rank totals, recombined, give the sink's own metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from keel_worker.distributed.partition import my_share
from keel_worker.training.metrics import MetricSink


@pytest.mark.parametrize(("count", "world"), [(1, 2), (4, 2), (5, 2), (5, 3), (2, 4)])
def test_every_micro_batch_runs_once_and_every_rank_runs_as_many(count, world):
    micro = [[10 * i, 10 * i + 1] for i in range(count)]
    shares = [my_share(micro, SimpleNamespace(rank=r, world_size=world)) for r in range(world)]
    real = sorted(tuple(rows) for share in shares for rows, is_real in share if is_real)
    assert real == sorted(tuple(rows) for rows in micro)
    assert len({len(share) for share in shares}) == 1  # lockstep: the same number of passes
    assert len(shares[0]) == -(-count // world)


def test_a_single_process_runs_them_all_in_order():
    micro = [[3], [1, 2], [0]]
    assert my_share(micro, None) == [([3], True), ([1, 2], True), ([0], True)]


def test_split_sinks_recombined_give_the_whole_sinks_metrics():
    values = [0.5, 2.0, -1.0, 4.0]
    weights = [3.0, 1.0, 2.0, 5.0]
    whole, parts = MetricSink(), [MetricSink(), MetricSink()]
    for i, (v, w) in enumerate(zip(values, weights, strict=True)):
        for sink in (whole, parts[i % 2]):
            sink.add("m/mean", torch.tensor(v))
            sink.add("m/ratio", torch.tensor(v), reduce="ratio", denom=w, weighted=True)
            sink.add("m/sum", torch.tensor(v), reduce="sum")
            sink.add("m/max", torch.tensor(v), reduce="max")
            sink.add("m/min", torch.tensor(v), reduce="min")
    recombined = MetricSink()
    totals = [p.totals() for p in parts]
    for name, (_, _, extreme) in totals[0].items():
        nums = torch.stack([t[name][0] for t in totals])
        dens = torch.stack([t[name][1] for t in totals])
        if extreme == "max":
            num = nums.max()
        elif extreme == "min":
            num = nums.min()
        else:
            num = nums.sum()
        recombined.add_total(name, num, dens.sum(), extreme)
    expected, got = whole.finish(), recombined.finish()
    for name in ("m/mean", "m/ratio", "m/sum", "m/max", "m/min"):
        assert got[name] == pytest.approx(expected[name], rel=1e-6), name
