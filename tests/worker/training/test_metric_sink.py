"""MetricSink: how per-micro-batch metrics combine into one value per step."""

import torch

from keel_worker.training.metrics import MetricSink


def test_weighted_means_and_extremes_over_micro_batches():
    sink = MetricSink()
    # Micro-batch 1: 3 tokens, mean weight 1.0, max 2.0; micro-batch 2: 1 token, 5.0 / 5.0.
    sink.add_weighted(
        {
            "is/weight_mean": torch.tensor(1.0),
            "is/weight_max": torch.tensor(2.0),
            "is/weight_min": torch.tensor(0.5),
        },
        weight=torch.tensor(3.0),
    )
    sink.add_weighted(
        {
            "is/weight_mean": torch.tensor(5.0),
            "is/weight_max": torch.tensor(5.0),
            "is/weight_min": torch.tensor(5.0),
        },
        weight=torch.tensor(1.0),
    )
    out = sink.finish()
    assert out["is/weight_mean"] == 2.0  # (3·1 + 1·5) / 4
    assert out["is/weight_max"] == 5.0  # not the weighted mean 2.75
    assert out["is/weight_min"] == 0.5


def test_sum_and_plain_mean():
    sink = MetricSink()
    for value in (1.0, 2.0, 6.0):
        sink.add("optim/loss", torch.tensor(value), reduce="sum")
        sink.add("optim/grad_norm", torch.tensor(value))
    out = sink.finish()
    assert out["optim/loss"] == 9.0
    assert out["optim/grad_norm"] == 3.0
