"""The resident tiny-dense model and toy data shared by the Tinker tests (a module of its own,
not conftest.py: see tests/job_configs.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from keel_worker.engines.models import load_model
from keel_worker.tinker.batch import Datum
from keel_worker.tinker.resident import ResidentModel

TOY_TOKENS = [1, 72]  # BOS, "E" (byte tokenizer): position i predicts TOY_TARGETS[i]
TOY_TARGETS = [72, 105]


def resident(*, lora_rank: int | None = None, seed: int = 0, micro_batch_size: int = 8):
    """A fresh tiny-dense `ResidentModel` (built from its config in code, always the same
    weights)."""
    loaded = load_model("tiny-dense", cache_dir=Path(tempfile.gettempdir()))
    return ResidentModel.create(
        loaded, lora_rank=lora_rank, seed=seed, micro_batch_size=micro_batch_size
    )


def toy_datum(**inputs) -> Datum:
    """The two-token toy with `inputs` (float arrays) beside its targets."""
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
    return Datum(list(TOY_TOKENS), {"target_tokens": np.array(TOY_TARGETS), **arrays})


def rl_datum(tokens: list[int], n_prompt: int, seed: int) -> Datum:
    """A sequence whose last `len(tokens) − n_prompt` targets are "sampled": random μ logprobs
    and advantages there, 0 on the prompt (the cookbook's layout)."""
    rng = np.random.default_rng(seed)
    n = len(tokens) - 1
    sampled = np.arange(n) >= n_prompt - 1
    return Datum(
        tokens[:-1],
        {
            "target_tokens": np.array(tokens[1:]),
            "logprobs": np.where(sampled, rng.uniform(-7, -4, n), 0.0).astype(np.float32),
            "advantages": np.where(sampled, rng.normal(size=n), 0.0).astype(np.float32),
        },
    )


def weights_of(model) -> dict:
    return {n: p.detach().clone() for n, p in model.model.named_parameters()}


def grads_of(model) -> dict:
    return {
        n: p.grad.detach().clone() for n, p in model.model.named_parameters() if p.grad is not None
    }
