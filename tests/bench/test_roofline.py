"""The roofline measurements of `bench/roofline.py` on a tiny model: the FLOPs it counts for
keel's training forward+backward match the textbook count, and the roofs are positive rates."""

from __future__ import annotations

import torch

from bench import roofline
from keel_worker.engines.tiny import build_tiny_dense


def test_counted_training_flops_match_three_times_the_forward_matmuls():
    model, _ = build_tiny_dense()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    out = roofline.train_forward_backward(
        model, prompts, group_size=3, response_len=8, bf16=False, repeats=1
    )
    assert out["rows"] == 6 and out["median_s"] > 0
    # Forward matmuls: 2 FLOPs per weight per token through the decoder layers, and per scored
    # token through the LM head; the backward costs twice the forward. The decoder sees each
    # distinct prompt once (prompt sharing) plus every response[:-1]; attention adds a little.
    layers = [
        m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    ]
    body = sum(m.in_features * m.out_features for m in layers)
    head = model.config.hidden_size * model.config.vocab_size
    decoder_tokens = sum(map(len, prompts)) + 6 * (8 - 1)
    expected = 3 * (2 * body * decoder_tokens + 2 * head * 6 * 8)
    assert expected <= out["flops"] <= 1.3 * expected


def test_roofs_are_measured_rates():
    model, _ = build_tiny_dense()
    shapes = roofline.model_gemm_shapes(model, 64)
    assert (64, model.config.hidden_size, model.config.vocab_size) in shapes
    gemm = roofline.gemm_peak(torch.float32, shapes[:1], squares=(128,))
    assert gemm["peak_gflops"] == max(gemm["gflops_by_shape"].values()) > 0
    assert roofline.memory_bandwidth(2**24) > 0
