"""The `vllm` rollout engine honours the RolloutEngine contract.

The gpu-marked tests need CUDA and vLLM; the others check the parts that run anywhere.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from keel_worker.engines.vllm import VLLMEngine, VLLMUnavailableError, _full_routes

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
GPU_VLLM = pytest.mark.skipif(
    not torch.cuda.is_available() or not HAVE_VLLM, reason="needs CUDA and vllm"
)


def test_routes_get_the_missing_last_row():
    """vLLM returns routes for the n - 1 fed tokens; the last row repeats the one before."""
    routed = torch.arange(3 * 2 * 2).reshape(3, 2, 2) % 8  # 3 fed tokens, L=2, K=2
    full = _full_routes(routed.numpy(), 4)
    assert full.shape == (4, 2, 2) and full.dtype == torch.uint8
    assert torch.equal(full[:3], routed.to(torch.uint8))
    assert torch.equal(full[3], full[2])


@pytest.mark.skipif(HAVE_VLLM and torch.cuda.is_available(), reason="vllm can run here")
def test_missing_vllm_or_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(VLLMUnavailableError, match="vllm"):
        VLLMEngine(tmp_path)


@pytest.fixture(scope="module")
def moe_engine(tmp_path_factory):
    from keel_worker.engines.models import load_model

    loaded = load_model("tiny-moe", cache_dir=tmp_path_factory.mktemp("cache"))
    engine = VLLMEngine.from_model(
        loaded.model, loaded.tokenizer, precision="fp32",
        workdir=tmp_path_factory.mktemp("vllm"), gpu_memory_utilization=0.2,
    )
    return engine, loaded


@pytest.mark.gpu
@GPU_VLLM
def test_generate_returns_logprobs_and_routes(moe_engine):
    from keel_worker.engines.chat import encode_prompt

    engine, loaded = moe_engine
    prompts = [encode_prompt(loaded.tokenizer, t) for t in ("What is 1 + 2?", "Hi")]
    batch = engine.generate(prompts, n=3, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    assert len(batch) == 6 and batch.prompt_index == [0, 0, 0, 1, 1, 1]
    for p, resp, lp, fin, routes in zip(
        batch.prompt_ids, batch.response_ids, batch.rollout_logprobs, batch.finish_reasons,
        batch.routes, strict=True,
    ):
        assert 1 <= len(resp) <= 8 and lp.shape == (len(resp),)
        assert torch.all(lp <= 0) and fin in ("stop", "length")
        assert routes.shape == (len(p) + len(resp), 4, 2)


@pytest.mark.gpu
@GPU_VLLM
def test_logprobs_agree_with_the_trainer_at_fp32(moe_engine):
    """μ from vLLM vs π_old from a transformers forward of the same weights."""
    from keel_worker.engines.chat import encode_prompt

    engine, loaded = moe_engine
    prompt = encode_prompt(loaded.tokenizer, "What is 3 + 4?")
    batch = engine.generate([prompt], n=2, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=1)
    model = loaded.model.cuda()
    for resp, lp in zip(batch.response_ids, batch.rollout_logprobs, strict=True):
        ids = torch.tensor([prompt + resp], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt) :, None]).squeeze(1)
        assert (ref.cpu() - lp).abs().max() < 2e-2  # GPU kernels differ; routes may flip


@pytest.mark.gpu
@GPU_VLLM
def test_load_weights_changes_the_samples(moe_engine):
    from keel_worker.engines.chat import encode_prompt

    engine, loaded = moe_engine
    prompt = encode_prompt(loaded.tokenizer, "What is 3 + 4?")
    before = engine.generate([prompt], n=1, max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.load_weights(loaded.model)
    after = engine.generate([prompt], n=1, max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0)
    assert before.rollout_logprobs[0].tolist() != after.rollout_logprobs[0].tolist()
