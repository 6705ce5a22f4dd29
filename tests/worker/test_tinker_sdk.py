"""The unmodified `tinker` SDK (0.38.0) against keel on CPU: a LoRA and a fully fine-tuned tiny
model trained through forward_backward / optim_step, calls pipelined before any result is read
and chunked by the SDK, saves and loads with and without optimizer state, sampling and
compute_logprobs from named and unnamed sampler saves, a retried seq_id answered once, and the
model visible in keel as a job with its curves and checkpoints."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tinker
import torch
from in_process import ADMIN_KEY, job_settings
from tinker import types
from tinker.lib.api_future_impl import _APIFuture
from tinker.lib.client_connection_pool_type import ClientConnectionPoolType
from tinker.lib.public_interfaces.training_client import TrainingClient, fetch_training_info
from tinker_harness import Workers, tinker_keel

import keel
from bench.embedded import live_api
from keel_server.db import session_scope
from keel_server.db.models import TinkerRequest
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.runner import session_factory

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


def train_step(
    training: TrainingClient, adam: types.AdamParams = LR
) -> types.ForwardBackwardOutput:
    """One forward_backward on BATCH and its optim_step; the pass's output."""
    out = training.forward_backward(BATCH, "cross_entropy")
    training.optim_step(adam).result()
    return out.result()


def test_a_lora_model_trains_through_the_sdk(settings) -> None:
    with tinker_keel(settings) as tk:
        service = tk.service()
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
            losses.append(loss_of(train_step(training)))
        assert losses[-1] < losses[0]
        # Per-token outputs: one logprobs array per datum, as long as its targets.
        lengths = [len(d.loss_fn_inputs["target_tokens"].data) for d in BATCH]
        assert [len(o["logprobs"].data) for o in a.loss_fn_outputs] == lengths

        # A client-side custom loss (the SDK's forward + a weighted cross_entropy): the same
        # weighted sum, so the same loss as the built-in one.
        def weighted_nll(data, logprobs_list):
            loss = sum(
                -(d.loss_fn_inputs["weights"].to_torch() * lp).sum()
                for d, lp in zip(data, logprobs_list, strict=True)
            )
            return loss, {"weighted_nll": float(loss)}

        builtin = loss_of(training.forward(BATCH, "cross_entropy").result())
        custom = training.forward_backward_custom(BATCH, weighted_nll).result()
        assert custom.metrics["weighted_nll"] == pytest.approx(builtin, rel=1e-5)
        training.optim_step(LR).result()

        with tk.keel() as client:
            job = client.jobs.retrieve(training.model_id)
            assert (job.status, job.step, job.policy_version) == ("running", 6, 6)
            points = client.metrics.list(job.id, name="loss")
            assert [p.step for p in points] == [1, 2, 3, 4, 5, 6]
            # the first step's loss is the two pipelined passes' together
            assert points[0].value == pytest.approx(loss_of(a) + loss_of(b), rel=1e-5)


def test_saves_loads_and_sampling(settings) -> None:
    with tinker_keel(settings) as tk:
        service = tk.service()
        training = service.create_lora_training_client(
            base_model="tiny-dense", rank=4, seed=0
        ).result()
        train_step(training)
        saved = training.save_state("after-one").result().path
        assert saved == f"tinker://{training.model_id}/weights/after-one"
        before = loss_of(training.forward(BATCH, "cross_entropy").result())
        train_step(training)
        assert loss_of(training.forward(BATCH, "cross_entropy").result()) != before
        training.load_state(saved).result()
        assert loss_of(training.forward(BATCH, "cross_entropy").result()) == pytest.approx(before)

        # With the optimizer: the next step from the save equals the step taken from it before.
        training.load_state_with_optimizer(saved).result()
        train_step(training)
        retrained = loss_of(training.forward(BATCH, "cross_entropy").result())
        training.load_state_with_optimizer(saved).result()
        train_step(training)
        assert loss_of(training.forward(BATCH, "cross_entropy").result()) == pytest.approx(
            retrained, rel=1e-6
        )

        # A named sampler save samples the weights it saved, after training moved on.
        named = training.save_weights_for_sampler("snapshot").result().path
        params = types.SamplingParams(max_tokens=4, temperature=1.0, seed=3)
        prompt = types.ModelInput.from_ints([5, 6, 7])
        from_save = service.create_sampling_client(model_path=named)
        before_step = from_save.sample(prompt, 2, params).result()
        train_step(training, types.AdamParams(learning_rate=0.5))
        after_step = from_save.sample(prompt, 2, params).result()
        assert [s.tokens for s in after_step.sequences] == [s.tokens for s in before_step.sequences]
        np.testing.assert_allclose(
            after_step.sequences[0].logprobs, before_step.sequences[0].logprobs, atol=1e-5
        )

        sampler = training.save_weights_and_get_sampling_client()
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


def full_fine_tuning_client(service: tinker.ServiceClient, base_model: str) -> TrainingClient:
    """A model with no LoRA config: the SDK's public calls always send one, so this goes
    through its own lower layer exactly as `create_lora_training_client` does."""
    holder = service.holder

    async def create() -> TrainingClient:
        request = types.CreateModelRequest(
            session_id=holder.get_session_id(),
            model_seq_id=holder.get_training_client_id(),
            base_model=base_model,
        )
        with holder.aclient(ClientConnectionPoolType.TRAIN) as client:
            future = await client.models.create(request=request)
        created = await _APIFuture(
            types.CreateModelResponse, holder, future, time.time(), "CreateModel"
        ).result_async()
        info = await fetch_training_info(holder, created.model_id)
        return TrainingClient(
            holder, model_seq_id=request.model_seq_id, model_id=created.model_id, info=info
        )

    return holder.run_coroutine_threadsafe(create()).result()


def test_full_fine_tuning_and_a_save_that_downloads(settings, tmp_path) -> None:
    with tinker_keel(settings) as tk:
        service = tk.service()
        training = full_fine_tuning_client(service, "tiny-dense")
        info = training.get_info()
        assert (info.is_lora, info.lora_rank) == (False, None)
        losses = []
        for _ in range(3):
            losses.append(loss_of(train_step(training)))
        assert losses[-1] < losses[0]
        training.save_state("final").result()
        with tk.keel() as client:
            (checkpoint,) = client.checkpoints.list(training.model_id).data
            assert (checkpoint.step, checkpoint.policy_version) == (3, 3)
            weights = client.checkpoints.download(checkpoint.id, tmp_path / "final")
        from transformers import AutoModelForCausalLM

        downloaded = AutoModelForCausalLM.from_pretrained(weights)  # a plain HF directory
        assert not (weights / "tinker_state").exists()
        ids = torch.tensor([[5, 6, 7, 8]])
        logprobs = torch.log_softmax(downloaded(ids).logits[0, :-1].float(), -1)
        expected = logprobs.gather(-1, ids[0, 1:, None])[:, 0]
        forward = training.forward([datum([5], [6, 7, 8])], "cross_entropy").result()
        np.testing.assert_allclose(
            forward.loss_fn_outputs[0]["logprobs"].data, expected.detach().numpy(), atol=1e-4
        )


def test_chunks_a_gap_and_a_pause(settings) -> None:
    """A 3-datum call goes as 2 chunks (chunk length 2) whose gradients add up; a seq_id that
    never comes fails the calls behind it after the bound; a paused model resumes on its next
    call with its state exact."""
    with tinker_keel(settings) as tk:
        service = tk.service()
        training = service.create_lora_training_client(
            base_model="tiny-dense", rank=4, seed=0
        ).result()
        whole = train_step(training)
        with session_scope(session_factory(settings)) as session:
            rows = session.query(TinkerRequest).filter_by(
                job_id=training.model_id, kind="forward_backward"
            )
            assert rows.count() == 2
        before = loss_of(training.forward(BATCH, "cross_entropy").result())
        assert before < loss_of(whole)

        with tk.keel() as client:
            client.jobs.pause(training.model_id)
            deadline = time.monotonic() + 60
            while client.jobs.retrieve(training.model_id).status != "paused":
                assert time.monotonic() < deadline, "the model did not pause"
                time.sleep(0.1)
        # The next call loads the model again from the state its pause saved.
        assert loss_of(training.forward(BATCH, "cross_entropy").result()) == pytest.approx(
            before, rel=1e-6
        )

        # seq_ids 1000+: nothing numbered 999 will come, so the call fails after the bound.
        late = forward_backward_at(training, seq_id=1000)
        with pytest.raises(tinker.RequestFailedError, match=r"seq_id \d+ never arrived"):
            late.result(timeout=60)


def forward_backward_at(training: TrainingClient, *, seq_id: int):
    """One forward_backward sent with a chosen seq_id through the SDK's lower layer."""
    holder = training.holder

    async def send():
        request = types.ForwardBackwardRequest(
            forward_backward_input=types.ForwardBackwardInput(data=BATCH, loss_fn="cross_entropy"),
            model_id=training.model_id,
            seq_id=seq_id,
        )
        with holder.aclient(ClientConnectionPoolType.TRAIN) as client:
            future = await client.training.forward_backward(request=request)
        return await _APIFuture(
            types.ForwardBackwardOutput, holder, future, time.time(), "ForwardBackward"
        ).result_async()

    return holder.run_coroutine_threadsafe(send())


def test_a_dead_worker_fails_its_open_calls_and_the_model_reloads_its_last_save(settings):
    """A worker process SIGKILLed with calls open: a new one takes the model over, the open
    calls fail with a reason naming the save it reloaded, and the model is that save."""
    with tinker_keel(settings, processes=True) as tk:
        service = tk.service()
        training = service.create_lora_training_client(
            base_model="tiny-dense", rank=4, seed=0
        ).result()
        train_step(training)
        saved = training.save_state("s1").result().path
        at_save = loss_of(training.forward(BATCH, "cross_entropy").result())
        train_step(training)  # trained past the save: lost with the worker
        first = tk.workers.spawned[training.model_id]
        first.kill()
        first.wait()
        open_call = training.forward(BATCH, "cross_entropy")
        with pytest.raises(tinker.RequestFailedError, match=f"reloaded from its last save {saved}"):
            open_call.result(timeout=120)
        assert tk.workers.spawned[training.model_id].pid != first.pid
        after = loss_of(training.forward(BATCH, "cross_entropy").result(timeout=120))
        assert after == pytest.approx(at_save, rel=1e-6)


def test_a_pending_future_survives_an_api_restart(settings):
    """A call queued while no worker runs, the API restarted on its port: the SDK's future
    (a database row) is answered by the new API once a worker runs the model."""
    workers = Workers(settings)
    with live_api(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with keel.Client(base_url=url, api_key=ADMIN_KEY) as admin:
            key = "tml-" + admin.keys.create(project="tinker", name="t").key
        service = tinker.ServiceClient(base_url=url + "/tinker", api_key=key)
        training = service.create_lora_training_client(
            base_model="tiny-dense", rank=4, seed=0
        ).result()
        pending = training.forward(BATCH, "cross_entropy")
        time.sleep(0.5)
        assert not pending.future().done()
    with live_api(settings, port=port):
        workers.start()
        try:
            out = pending.result(timeout=120)
        finally:
            service.close("success")
            workers.stop()
    assert len(out.loss_fn_outputs) == len(BATCH)


def test_an_rl_step_on_smollm2_with_keels_objective(settings):
    """SmolLM2-135M-Instruct: sample through a sampling client, train the samples with keel's
    `minirl` (μ logprobs as a datum input): the result carries keel's mismatch / IS / clip
    numbers, and the step's metrics land on the job under keel's names."""
    prompt = [1, 9690, 198, 2683, 314, 216, 34, 1232, 216, 35, 47, 2, 198]
    with tinker_keel(settings) as tk:
        service = tk.service()
        training = service.create_lora_training_client(
            base_model="smollm2-135m-instruct", rank=8, seed=0
        ).result()
        sampler = training.save_weights_and_get_sampling_client()
        params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=1)
        samples = sampler.sample(types.ModelInput.from_ints(prompt), 4, params).result()
        rewards = [float(len(s.tokens) % 2) for s in samples.sequences]
        mean = sum(rewards) / len(rewards)
        data = []
        for sequence, reward in zip(samples.sequences, rewards, strict=True):
            tokens = prompt + sequence.tokens
            pad = [0.0] * (len(prompt) - 1)
            data.append(
                types.Datum(
                    model_input=types.ModelInput.from_ints(tokens[:-1]),
                    loss_fn_inputs={
                        "target_tokens": tokens[1:],
                        "logprobs": pad + list(sequence.logprobs),
                        "advantages": pad + [reward - mean + 0.5] * len(sequence.tokens),
                    },
                )
            )
        out = training.forward_backward(data, "minirl", {"norm": 4.0}).result()
        for name in ("mismatch/kl_k3:mean", "is/weight_mean:mean", "clip/frac:mean"):
            assert np.isfinite(out.metrics[name]), name
        # The sampler ran the same weights in fp32: engine and trainer agree closely.
        assert abs(out.metrics["mismatch/kl_k3:mean"]) < 1e-3
        training.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        with tk.keel() as client:
            names = {p.name for p in client.metrics.list(training.model_id, step_min=1)}
        assert {"loss", "mismatch/kl_k3", "is/weight_mean", "clip/frac"} <= names
