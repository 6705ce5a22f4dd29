"""`generate_batched` on the real `hf` engine and the tiny dense model: one engine call per set of
sampling parameters, each result the same as a generate of its own, cut to its own request."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_worker.agents.batcher import GenerationRequest, GenerationResult, generate_batched
from keel_worker.engines.base import RolloutBatch
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model

# Different lengths, so the batched call left-pads the shorter prompts.
TEXTS = ("hi", "What is 3 + 4? Answer with just the number.", "abc", "tell me a story")


class RecordingEngine:
    """The real engine, with a record of the calls it got."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine
        self.calls: list[dict] = []

    def generate(self, prompt_ids: list[list[int]], **kwargs) -> RolloutBatch:
        self.calls.append({"prompts": len(prompt_ids), **kwargs})
        return self.engine.generate(prompt_ids, **kwargs)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> HFEngine:
    loaded = load_model("tiny-dense", cache_dir=Path(tmp_path_factory.mktemp("cache")))
    engine = HFEngine(loaded.model, loaded.tokenizer, precision="fp32")
    engine.eos_ids = {-1}  # the random tiny model: no response ends before its max_new_tokens
    return engine


@pytest.fixture(scope="module")
def prompts(engine: HFEngine) -> list[list[int]]:
    return [encode_prompt(engine.tokenizer, text) for text in TEXTS]


def greedy(prompt_ids: list[int], max_new_tokens: int, **kwargs) -> GenerationRequest:
    return GenerationRequest(prompt_ids, max_new_tokens, 0.0, 1.0, 0, **kwargs)


def alone(engine: HFEngine, request: GenerationRequest) -> tuple[list[int], list[float]]:
    """The request as a generate call of its own."""
    batch = engine.generate(
        [request.prompt_ids],
        n=1,
        max_new_tokens=request.max_new_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
    )
    return batch.response_ids[0], batch.rollout_logprobs[0].tolist()


def test_greedy_results_equal_each_request_generated_alone_and_are_cut_to_their_length(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    requests = [greedy(p, m) for p, m in zip(prompts, (3, 8, 5, 8), strict=True)]
    recording = RecordingEngine(engine)
    results = generate_batched(recording, requests)

    assert recording.calls == [
        {
            "prompts": 4,
            "n": 1,
            "max_new_tokens": 8,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "seed": None,
        }
    ]
    for request, result in zip(requests, results, strict=True):
        sampled, logprobs = alone(engine, request)
        assert result.sampled_ids == sampled and len(sampled) == request.max_new_tokens
        assert result.logprobs == pytest.approx(logprobs, abs=1e-5)
        # The engine decoded 8 tokens for everyone; the shorter requests were cut.
        assert result.finish_reason == "length"
        assert result.routes is None


def test_one_engine_call_per_set_of_sampling_parameters_results_in_request_order(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    hot = {"temperature": 1.0, "top_p": 0.9, "top_k": 20}
    requests = [
        greedy(prompts[0], 4),
        GenerationRequest(prompts[1], 6, **hot),
        greedy(prompts[2], 2),
        GenerationRequest(prompts[3], 3, **hot),
    ]
    recording = RecordingEngine(engine)
    results = generate_batched(recording, requests)

    assert [(c["prompts"], c["max_new_tokens"], c["temperature"]) for c in recording.calls] == [
        (2, 4, 0.0),
        (2, 6, 1.0),
    ]
    assert (recording.calls[1]["top_p"], recording.calls[1]["top_k"]) == (0.9, 20)
    assert [len(r.sampled_ids) for r in results] == [4, 6, 2, 3]
    assert all(len(r.logprobs) == len(r.sampled_ids) for r in results)
    assert results[0].sampled_ids == alone(engine, requests[0])[0]
    assert results[2].sampled_ids == alone(engine, requests[2])[0]


def test_a_stop_id_ends_its_request_only_and_is_kept(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full, logprobs = alone(engine, greedy(prompts[1], 8))
    stop = full[2]
    first = full.index(stop)  # the greedy response may hold the stop token earlier too
    requests = [greedy(prompts[1], 8, stop_ids=frozenset({stop})), greedy(prompts[1], 8)]
    stopped, unstopped = generate_batched(engine, requests)

    assert stopped.sampled_ids == full[: first + 1] and stopped.finish_reason == "stop"
    assert stopped.logprobs == pytest.approx(logprobs[: first + 1], abs=1e-5)
    assert unstopped.sampled_ids == full and unstopped.finish_reason == "length"


def test_an_engine_stop_inside_a_request_s_length_stays_a_stop(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full, _ = alone(engine, greedy(prompts[0], 6))
    engine.eos_ids = {full[3]}
    try:
        first = full.index(full[3])
        short, long = generate_batched(
            engine, [greedy(prompts[0], first + 1), greedy(prompts[2], 6)]
        )
    finally:
        engine.eos_ids = {-1}
    assert (short.sampled_ids, short.finish_reason) == (full[: first + 1], "stop")
    assert isinstance(long, GenerationResult) and len(long.logprobs) == len(long.sampled_ids)


def test_routes_are_cut_with_the_response_on_a_moe_model(tmp_path: Path) -> None:
    loaded = load_model("tiny-moe", cache_dir=tmp_path)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision="fp32")
    engine.eos_ids = {-1}
    prompt = encode_prompt(loaded.tokenizer, "hi")
    short, long = generate_batched(engine, [greedy(prompt, 2), greedy(prompt, 5)])
    assert short.routes is not None and long.routes is not None
    assert short.routes.shape[0] == len(prompt) + 2 and long.routes.shape[0] == len(prompt) + 5
    assert short.routes.equal(long.routes[: len(prompt) + 2])  # same prompt, same greedy tokens


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_ids": [], "max_new_tokens": 4},
        {"prompt_ids": [5], "max_new_tokens": 0},
        {"prompt_ids": [5], "max_new_tokens": 4, "temperature": -1.0},
        {"prompt_ids": [5], "max_new_tokens": 4, "top_p": 0.0},
        {"prompt_ids": [5], "max_new_tokens": 4, "top_k": -1},
    ],
)
def test_a_request_the_engine_would_refuse_is_refused_when_built(bad: dict) -> None:
    with pytest.raises(ValueError):
        GenerationRequest(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, **bad})
