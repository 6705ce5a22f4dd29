"""The `vllm` engine samples a LoRA run's merged policy (engines/vllm.py: merged-weight sync).

Marked `vllm` for the vLLM test tier; skipped where the vllm package is missing (never run on
the CPU build machines, which have no vLLM). It checks both halves of the sync: the engine
starts from the merged weights `from_model` writes, and `load_weights` after an adapter update
makes vLLM's μ follow the trainer's base + adapter policy, not the base it started from.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from keel.types.training import LoraConfig
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.models import load_model
from keel_worker.training.lora import apply_lora

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm"),
]


def _move_adapters(model, seed: int) -> None:
    """What an update does: every B (zero at the start) gets a seeded non-zero value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _max_gap(model, prompt, batch) -> float:
    gaps = []
    for response, mu_T in zip(batch.response_ids, batch.rollout_logprobs, strict=True):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits_T_V = model(ids).logits[0, len(prompt) - 1 : -1].float()
        pi_T = torch.log_softmax(logits_T_V, -1).gather(1, ids[0, len(prompt) :, None])[:, 0]
        gaps.append(float((pi_T - mu_T).abs().max()))
    return max(gaps)


def test_vllm_samples_the_merged_lora_policy(tmp_path):
    from keel_worker.engines.vllm import VLLMEngine

    loaded = load_model("tiny-dense", cache_dir=tmp_path / "cache")
    base = load_model("tiny-dense", cache_dir=tmp_path / "cache").model
    policy = apply_lora(loaded.model, LoraConfig(rank=4))
    _move_adapters(policy, seed=0)
    engine = VLLMEngine.from_model(
        policy, loaded.tokenizer, precision="fp32", workdir=tmp_path / "vllm",
        gpu_memory_utilization=0.2,
    )  # fmt: skip
    prompt = encode_prompt(loaded.tokenizer, "What is 3 + 4?")

    def sample():
        return engine.generate([prompt], n=4, max_new_tokens=8, temperature=1.0, seed=1)

    first = sample()
    assert _max_gap(policy, prompt, first) < 2e-2  # the tolerance of test_vllm_engine.py
    _move_adapters(policy, seed=1)
    engine.load_weights(policy)
    second = sample()
    assert _max_gap(policy, prompt, second) < 2e-2
    assert _max_gap(base, prompt, second) > 5e-2  # the adapters moved it: the checks can fail
