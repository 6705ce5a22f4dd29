from __future__ import annotations

import pytest
import torch

from keel_worker.engines.base import RolloutBatch
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.routing_replay import RoutingReplay

# Different lengths so the engine has to left-pad the shorter prompts.
PROMPTS = ("hi", "What is 3 + 4? Answer with just the number.", "abc")


def _prompts(tokenizer) -> list[list[int]]:
    return [encode_prompt(tokenizer, text) for text in PROMPTS]


def _trainer_logprobs(model, batch: RolloutBatch, i: int, temperature: float) -> torch.Tensor:
    """The trainer's view: one unpadded full forward, log softmax(logits / T) of each token."""
    prompt, response = batch.prompt_ids[i], batch.response_ids[i]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    start = len(prompt) - 1
    logprobs = torch.log_softmax(logits[start : start + len(response)] / temperature, dim=-1)
    return logprobs.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def _max_mismatch(model, batch: RolloutBatch, temperature: float) -> float:
    return max(
        (_trainer_logprobs(model, batch, i, temperature) - batch.rollout_logprobs[i]).abs().max()
        for i in range(len(batch))
    ).item()


@pytest.mark.parametrize("which", ["tiny_dense", "tiny_moe"])
def test_fp32_engine_matches_trainer_logprobs(which: str, request: pytest.FixtureRequest) -> None:
    loaded = request.getfixturevalue(which)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision="fp32")
    batch = engine.generate(
        _prompts(loaded.tokenizer), n=2, max_new_tokens=10, temperature=0.7, seed=0
    )
    assert _max_mismatch(loaded.model, batch, 0.7) < 1e-5


def test_batch_layout_and_seeded_repeat(tiny_dense) -> None:
    engine = HFEngine(tiny_dense.model, tiny_dense.tokenizer)
    prompts = _prompts(tiny_dense.tokenizer)
    batch = engine.generate(prompts, n=3, max_new_tokens=6, temperature=1.0, seed=3)
    assert len(batch) == 9 and batch.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompt_ids[4] == prompts[1] and batch.routes is None
    for logprobs, response in zip(batch.rollout_logprobs, batch.response_ids, strict=True):
        assert logprobs.dtype == torch.float32 and logprobs.shape == (len(response),)
        assert (logprobs <= 0).all()
    again = engine.generate(prompts, n=3, max_new_tokens=6, temperature=1.0, seed=3)
    assert again.response_ids == batch.response_ids


def test_stops_at_the_first_eos_and_reports_finish_reasons(tiny_dense) -> None:
    model = tiny_dense.model
    # Declare every lowercase letter an end-of-sequence token (models may have several EOS ids),
    # so random tiny-model samples stop early with a known probability.
    letters = [3 + b for b in range(ord("a"), ord("z") + 1)]
    previous = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [2, *letters]
    try:
        engine = HFEngine(model, tiny_dense.tokenizer)
    finally:
        model.generation_config.eos_token_id = previous
    batch = engine.generate(
        _prompts(tiny_dense.tokenizer), n=8, max_new_tokens=12, temperature=1.5, seed=0
    )
    eos = {2, *letters}
    for response, reason in zip(batch.response_ids, batch.finish_reasons, strict=True):
        stops = [j for j, token in enumerate(response) if token in eos]
        if reason == "stop":
            assert stops == [len(response) - 1]
        else:
            assert stops == [] and len(response) == 12
    assert "stop" in batch.finish_reasons and "length" in batch.finish_reasons
    assert _max_mismatch(model, batch, 1.5) < 1e-5


def test_moe_routes_match_the_trainer_forward(tiny_moe) -> None:
    engine = HFEngine(tiny_moe.model, tiny_moe.tokenizer)
    batch = engine.generate(
        _prompts(tiny_moe.tokenizer), n=2, max_new_tokens=8, temperature=1.0, seed=1
    )
    replay = RoutingReplay(tiny_moe.model)
    for i in range(len(batch)):
        sequence = batch.prompt_ids[i] + batch.response_ids[i]
        with torch.no_grad(), replay.record() as recording:
            tiny_moe.model(torch.tensor([sequence]))
        routes = batch.routes[i]
        assert routes.dtype == torch.uint8 and routes.shape == (len(sequence), 4, 2)
        assert torch.equal(routes, recording.routes_B_S_L_K[0])


def test_low_precision_engines_have_a_measurable_mismatch(tiny_moe) -> None:
    prompts = _prompts(tiny_moe.tokenizer)
    mean_mismatch = {}
    for precision in ("bf16", "fp8"):
        engine = HFEngine(tiny_moe.model, tiny_moe.tokenizer, precision=precision)
        batch = engine.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, seed=0)
        deltas = [
            (_trainer_logprobs(tiny_moe.model, batch, i, 1.0) - batch.rollout_logprobs[i]).abs()
            for i in range(len(batch))
        ]
        mean_mismatch[precision] = torch.cat(deltas).mean().item()
    # Measured: bf16 about 1.6e-3, fp8 about 1e-2 mean |Δ logprob| (fp32: about 2e-7).
    assert mean_mismatch["bf16"] > 2e-4
    assert mean_mismatch["fp8"] > 2 * mean_mismatch["bf16"]


def test_engine_copy_is_separate_until_load_weights(tiny_dense) -> None:
    model = tiny_dense.model
    engine = HFEngine(model, tiny_dense.tokenizer)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        prompts = _prompts(tiny_dense.tokenizer)[:1]
        stale = engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=0)
        assert _max_mismatch(model, stale, 1.0) > 1e-4
        engine.load_weights(model)
        fresh = engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=0)
        assert _max_mismatch(model, fresh, 1.0) < 1e-5
    finally:
        model.load_state_dict(original)


def test_invalid_arguments_raise(tiny_dense) -> None:
    engine = HFEngine(tiny_dense.model, tiny_dense.tokenizer)
    with pytest.raises(ValueError, match="non-empty"):
        engine.generate([[]], n=1, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        engine.generate([[5]], n=0, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="unknown precision"):
        HFEngine(tiny_dense.model, tiny_dense.tokenizer, precision="fp4")


def test_replaying_engine_routes_lowers_the_fp8_mismatch(tiny_moe) -> None:
    """R3 mechanics (docs/concepts/algorithm.md §2.2): the trainer forward replaying the engine's
    routes agrees better with μ than its own routing does (measured k3 KL: 1.3e-4 without, 1.1e-4
    with)."""
    engine = HFEngine(tiny_moe.model, tiny_moe.tokenizer, precision="fp8")
    prompts = [*_prompts(tiny_moe.tokenizer), encode_prompt(tiny_moe.tokenizer, "tell a story")]
    batch = engine.generate(prompts, n=4, max_new_tokens=16, temperature=1.0, seed=0)
    replay = RoutingReplay(tiny_moe.model)
    natural, replayed = [], []
    for i in range(len(batch)):
        with replay.replay(batch.routes[i][None]):
            replayed.append(_trainer_logprobs(tiny_moe.model, batch, i, 1.0))
        natural.append(_trainer_logprobs(tiny_moe.model, batch, i, 1.0))
    mu = torch.cat(batch.rollout_logprobs)

    def k3(trainer: list[torch.Tensor]) -> float:
        log_ratio = torch.cat(trainer) - mu  # log π/μ, k3 = E_μ[ratio − 1 − log ratio]
        return (log_ratio.exp() - 1 - log_ratio).mean().item()

    assert k3(replayed) < 0.95 * k3(natural)
