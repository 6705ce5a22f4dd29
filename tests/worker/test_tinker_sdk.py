"""The unmodified `tinker` SDK (0.38.0) against keel on CPU: a LoRA and a fully fine-tuned tiny
model trained through forward_backward / optim_step, calls pipelined before any result is read
and chunked by the SDK, saves and loads with and without optimizer state, sampling and
compute_logprobs from named and unnamed sampler saves, a retried seq_id answered once, and the
model visible in keel as a job with its curves and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import tinker
from in_process import job_settings
from tinker import types
from tinker_harness import tinker_keel

from keel_server.platform.settings import Settings

pytestmark = pytest.mark.slow

LR = types.AdamParams(learning_rate=1e-2)


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    # Small chunks so a 5-datum batch is split by the SDK into several requests.
    return job_settings(sqlite_url, tmp_path, tinker_fwdbwd_max_chunk_len=2, tinker_seq_gap_s=3.0)


def datum(prompt: list[int], completion: list[int]) -> types.Datum:
    """A supervised datum: loss on the completion's tokens only."""
    tokens = prompt + completion
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


BATCH = [datum([5, 6, 7], [8, 9]), datum([10, 11], [12, 13, 14]), datum([3, 4, 5], [6])]


def loss_of(output: types.ForwardBackwardOutput) -> float:
    return float(output.metrics["loss:sum"])


def test_a_lora_model_trains_through_the_sdk(settings) -> None:
    with tinker_keel(settings) as tk:
        service = tinker.ServiceClient(base_url=tk.base_url, api_key=tk.api_key)
        training = service.create_lora_training_client(
            base_model="tiny-dense", rank=4, seed=0
        ).result()
        info = training.get_info()
        assert info.model_data.model_name == "tiny-dense"
        # Pipelined: both passes and the step are sent before any result is read; the two
        # passes see the same weights, and their gradients add up in the step.
        first = training.forward_backward(BATCH, "cross_entropy")
        second = training.forward_backward(BATCH, "cross_entropy")
        step = training.optim_step(LR)
        a, b = first.result(), second.result()
        assert loss_of(a) == pytest.approx(loss_of(b), rel=1e-6)
        step.result()
        losses = [loss_of(a)]
        for _ in range(4):
            out = training.forward_backward(BATCH, "cross_entropy")
            training.optim_step(LR).result()
            losses.append(loss_of(out.result()))
        assert losses[-1] < losses[0]
        # Per-token outputs: one logprobs array per datum, as long as its targets.
        lengths = [len(d.loss_fn_inputs["target_tokens"].data) for d in BATCH]
        assert [len(o["logprobs"].data) for o in a.loss_fn_outputs] == lengths

        with tk.keel() as client:
            job = client.jobs.retrieve(training.model_id)
            assert (job.status, job.step, job.policy_version) == ("running", 5, 5)
            points = client.metrics.list(job.id, name="loss:sum")
            assert [p.step for p in points] == [1, 2, 3, 4, 5]
            # the first step's loss is the two pipelined passes' together
            assert points[0].value == pytest.approx(loss_of(a) + loss_of(b), rel=1e-5)


def test_saves_loads_and_sampling(settings) -> None:
    with tinker_keel(settings) as tk:
        service = tinker.ServiceClient(base_url=tk.base_url, api_key=tk.api_key)
        training = service.create_lora_training_client(
            base_model="tiny-dense", rank=4, seed=0
        ).result()
        training.forward_backward(BATCH, "cross_entropy").result()
        training.optim_step(LR).result()
        saved = training.save_state("after-one").result().path
        assert saved == f"tinker://{training.model_id}/weights/after-one"
        before = loss_of(training.forward(BATCH, "cross_entropy").result())
        training.forward_backward(BATCH, "cross_entropy").result()
        training.optim_step(LR).result()
        assert loss_of(training.forward(BATCH, "cross_entropy").result()) != before
        training.load_state(saved).result()
        assert loss_of(training.forward(BATCH, "cross_entropy").result()) == pytest.approx(before)

        sampler = training.save_weights_and_get_sampling_client()
        prompt = types.ModelInput.from_ints([5, 6, 7])
        params = types.SamplingParams(max_tokens=4, temperature=1.0, seed=3)
        result = sampler.sample(prompt, 2, params).result()
        assert len(result.sequences) == 2
        assert all(1 <= len(s.tokens) <= 4 for s in result.sequences)
        # compute_logprobs = the model's own logprobs of the prompt (first one None)
        sequence = [5, 6, 7, 8, 9]
        logprobs = sampler.compute_logprobs(types.ModelInput.from_ints(sequence)).result()
        forward = training.forward([datum(sequence[:1], sequence[1:])], "cross_entropy").result()
        assert logprobs[0] is None
        np.testing.assert_allclose(
            logprobs[1:], forward.loss_fn_outputs[0]["logprobs"].data, atol=1e-4
        )
