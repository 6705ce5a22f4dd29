from __future__ import annotations

import torch
from transformers import DynamicCache

from keel_worker.engines.kv_cache import BufferedLayer, make_cache


def _decode(model, cache) -> list[torch.Tensor]:
    """Prefill 2 prompts, repeat each twice, drop one row, decode 3 steps; logits per call."""
    outputs = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7], [8, 9, 10]]), cache=cache, use_cache=True)
        outputs.append(out.logits)
        cache.batch_repeat_interleave(2)
        cache.batch_select_indices(torch.tensor([0, 1, 3]))
        for step in range(3):
            feed = torch.tensor([[11 + step]] * 3)
            outputs.append(model(input_ids=feed, cache=cache, use_cache=True).logits)
    return outputs


def test_buffered_cache_decodes_exactly_like_the_dynamic_cache(tiny_dense) -> None:
    model = tiny_dense.model
    buffered = make_cache(model.config, capacity=6)
    assert all(isinstance(layer, BufferedLayer) for layer in buffered.layers)
    for ours, reference in zip(
        _decode(model, buffered), _decode(model, DynamicCache(config=model.config)), strict=True
    ):
        assert torch.equal(ours, reference)
    assert buffered.get_seq_length() == 6
