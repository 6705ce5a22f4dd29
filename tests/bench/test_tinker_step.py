"""`bench/tinker_step.py` without a service: the fixed batch it sends both ways, and its verdict
(the timed runs need keel up and `.venv-tinker`: `python -m bench.tinker_step`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import tinker_step
from keel_worker.engines.tiny import build_tiny_dense


def test_the_batch_is_tinkers_shift_with_inputs_only_on_the_response():
    model, _ = build_tiny_dense()
    vocab = int(model.get_input_embeddings().num_embeddings)
    rows = tinker_step.make_batch(model, vocab, seed=0)
    length = tinker_step.PROMPT_TOKENS + tinker_step.RESPONSE_TOKENS
    assert len(rows) == tinker_step.BATCH
    first = rows[0]
    assert len(first["tokens"]) == length
    assert first["tokens"][1:] == first["inputs"]["target_tokens"][:-1]  # position i predicts i+1
    # The first response token is predicted at position PROMPT_TOKENS − 1.
    response = np.arange(length) >= tinker_step.PROMPT_TOKENS - 1
    for b, row in enumerate(rows):
        advantages = np.asarray(row["inputs"]["advantages"])
        assert (advantages[~response] == 0).all()
        assert (advantages[response] == (1.0 if b % 2 == 0 else -1.0)).all()
        assert (np.asarray(row["inputs"]["logprobs"])[~response] == 0).all()
    # μ is the model's own logprob of the target plus noise of σ = 0.05: close, not equal.
    with torch.no_grad():
        logits = model(torch.tensor([first["tokens"]])).logits[0].float()
    logp = torch.log_softmax(logits, -1)[torch.arange(length), first["inputs"]["target_tokens"]]
    gap = np.asarray(first["inputs"]["logprobs"])[response] - logp.numpy()[response]
    assert 0 < np.abs(gap).max() < 0.3
    assert rows == tinker_step.make_batch(model, vocab, seed=0)  # fixed


def test_the_ratio_is_the_tinker_median_over_both_in_process_runs():
    # in-process medians of [1.0, 1.2, 1.1] + [0.9, 1.0, 1.3] = 1.05; Tinker median 1.2.
    result = tinker_step.summarize([1.0, 1.2, 1.1], [1.2, 1.1, 1.3], [0.9, 1.0, 1.3])
    assert result["in_process_s"]["median"] == pytest.approx(1.05)
    assert result["ratio"] == pytest.approx(1.2 / 1.05)
    assert not result["met"]  # 1.143 > 1.10
    assert tinker_step.summarize([1.0], [1.05], [1.0])["met"]
