"""An agent job end to end in one process: the API on a real port, `run_job` on a thread, and a
harness made of the unmodified `openai` SDK (sync and async) running 2-turn episodes with tools
through `keel.agents`; rewards posted with the episode keys; every step trained; the trained
sequences are the sampled tokens bit for bit; a checkpoint downloads. Bad calls get their 4xx
and record nothing."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest
from agent_harness import STEPS, TOOLS, agent_job, run_async_harness, run_sync_harness
from in_process import ADMIN_KEY, job_settings

import keel
from bench.embedded import live_api
from keel.types import metric_names as metric
from keel_server.db import episodes as episodes_db
from keel_server.db import session_scope
from keel_server.db.rollouts import step_rollouts
from keel_server.platform.settings import Settings
from keel_worker.agents.trajectory import training_sequences
from keel_worker.jobrunner.runner import run_job

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    return job_settings(sqlite_url, tmp_path)


class Worker:
    """`run_job` on a thread, its outcome kept."""

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(job_id, settings), daemon=True)
        self.thread.start()

    def _run(self, job_id: str, settings: Settings) -> None:
        self.outcome = run_job(job_id, settings)

    def join(self) -> None:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the job did not finish"


def _assert_trained_on_what_was_sampled(settings: Settings, job_id: str, seen: dict) -> None:
    """Each episode is one sequence (append-only history) whose trained tokens are exactly the
    ids its answers reported, in order."""
    from keel_worker.jobrunner.runner import session_factory

    with session_scope(session_factory(settings)) as session:
        rows = [r for step in range(1, STEPS + 1) for r in step_rollouts(session, job_id, step)]
        turns = episodes_db.step_turns(session, [r.id for r in rows])
    assert set(seen) == {r.id for r in rows}
    for episode_id, samples in seen.items():
        (sequence,) = training_sequences(turns[episode_id])
        response = sequence.response_ids
        trained = [t for t, keep in zip(response, sequence.trained_mask, strict=True) if keep]
        assert trained == samples[0]["token_ids"] + samples[1]["token_ids"]
        assert [s["sequence_index"] for s in samples] == [0, 0]


@pytest.mark.parametrize(
    "model",
    [
        {"model": {"name": "tiny-dense"}},
        # MoE: R3 replays the routes the engine took for each sequence, kept by the worker.
        {"model": {"name": "tiny-moe"}, "routing_replay": "R3"},
    ],
    ids=["dense", "moe-r3"],
)
def test_an_agent_job_trains_from_the_sync_openai_sdk(settings, tmp_path, model):
    with live_api(settings) as url, keel.Client(base_url=url, api_key=ADMIN_KEY) as client:
        job = agent_job(client, **model)
        worker = Worker(job.id, settings)
        seen = run_sync_harness(client, job.id)
        worker.join()
        done = client.jobs.retrieve(job.id)
        assert (worker.outcome.status, done.step, done.policy_version) == ("succeeded", 2, 2)
        assert len(seen) == STEPS * 2 * 2
        _assert_trained_on_what_was_sampled(settings, job.id, seen)
        points = client.metrics.list(job.id, limit=10_000)
        assert {p.name for p in points} >= metric.AGENT_METRICS
        sampled = [p for p in points if p.name == metric.AGENT_SAMPLED_TOKENS]
        assert [p.step for p in sampled] == [1, 2] and all(p.value > 0 for p in sampled)
        if "routing_replay" in model:  # every step replayed the engine's routes, measured them
            replay = {p.value for p in points if p.name == metric.ROUTING_REPLAY_MODE}
            assert replay == {3.0}
            assert {p.step for p in points if p.name == metric.ROUTING_INFER_VS_TRAIN_ANY} == {1, 2}
        checkpoint = client.checkpoints.list(job.id).data[-1]
        path = client.checkpoints.download(checkpoint.id, tmp_path / "model")
        assert (path / "config.json").is_file()


def test_an_agent_job_trains_from_the_async_openai_sdk(settings):
    async def main() -> dict:
        async with keel.AsyncClient(base_url=url, api_key=ADMIN_KEY) as client:
            return await run_async_harness(client, job.id)

    with live_api(settings) as url, keel.Client(base_url=url, api_key=ADMIN_KEY) as client:
        job = agent_job(client)
        worker = Worker(job.id, settings)
        seen = asyncio.run(main())
        worker.join()
        assert worker.outcome.status == "succeeded"
        assert len(seen) == STEPS * 2 * 2
        _assert_trained_on_what_was_sampled(settings, job.id, seen)


def test_bad_calls_get_a_clear_4xx_and_record_nothing(settings):
    with live_api(settings) as url, keel.Client(base_url=url, api_key=ADMIN_KEY) as client:
        job = agent_job(client, steps=1)
        worker = Worker(job.id, settings)
        first, second, *rest = client.episodes.claim(job.id, max_episodes=4, wait_s=30).data
        llm = openai.OpenAI(base_url=first.base_url, api_key=first.api_key, max_retries=0)
        user = [{"role": "user", "content": "hi"}]

        def refused(status: int, code: str, **call) -> None:
            with pytest.raises(openai.APIStatusError) as caught:
                llm.chat.completions.create(model="policy", **call)
            assert caught.value.status_code == status, caught.value
            assert caught.value.body["code"] == code, caught.value.body

        refused(400, "invalid_messages", messages=[{"role": "wizard", "content": "hi"}])
        refused(400, "invalid_request", messages=user, stream=False, n=2)
        refused(400, "invalid_request", messages=user, temperature=0.3)
        unknown_tool = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "nope", "arguments": "{}"}}
            ],
        }
        refused(400, "unknown_tool", messages=[*user, unknown_tool], tools=TOOLS)
        refused(400, "context_length_exceeded", messages=[{"role": "user", "content": "x" * 5000}])
        # Another episode's key for this episode's calls: the key names its own episode, so a
        # forged pairing is impossible; a made-up key is a 401.
        forged = openai.OpenAI(
            base_url=first.base_url, api_key=first.api_key[:-4] + "AAAA", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            forged.chat.completions.create(model="policy", messages=user)
        # An episode key may not read or reward another episode.
        other = keel.Client(base_url=url, api_key=first.api_key, max_retries=0)
        with pytest.raises(keel.NotFoundError):
            other.rewards.create(second.id, 1.0)
        with pytest.raises(keel.PermissionDeniedError):
            other.jobs.retrieve(job.id)
        assert client.episodes.retrieve(first.id).turns == []  # nothing recorded

        ok = llm.chat.completions.create(model="policy", messages=user)
        assert ok.choices[0].finish_reason in ("stop", "length")
        # A raw prompt (`/completions`) continuing the conversation's own tokens, with logprobs.
        keel_sample = ok.model_extra["keel"]
        with pytest.raises(openai.BadRequestError):
            llm.completions.create(model="policy", prompt=[10**9], max_tokens=2)
        raw = llm.completions.create(model="policy", prompt="Q: 1+1=", max_tokens=2, logprobs=1)
        sampled = raw.model_extra["keel"]
        assert raw.choices[0].logprobs.token_logprobs == sampled["logprobs"]
        assert sampled["turn"] == keel_sample["turn"] + 1
        other.rewards.create(first.id, 1.0)
        refused(409, "episode_ended", messages=user)  # a call after the episode's reward
        assert len(client.episodes.retrieve(first.id).turns) == 2
        for episode in [second, *rest]:
            client.rewards.create(episode.id, 0.0)
        worker.join()
        assert worker.outcome.status == "succeeded"


def test_a_paused_step_keeps_its_turns_and_a_resumed_worker_serves_the_rest(settings):
    """Nothing a harness sampled is lost across a pause: the resumed step finds its episodes and
    their stored turns; the next call of a conversation starts a new sequence (the new worker has
    no trajectory to continue), and both sequences train under the episode's reward."""
    user = {"role": "user", "content": "hi"}
    with live_api(settings) as url, keel.Client(base_url=url, api_key=ADMIN_KEY) as client:
        job = agent_job(client, steps=1, prompts_per_step=1)
        first_run = Worker(job.id, settings)
        episodes = client.episodes.claim(job.id, max_episodes=2, wait_s=30).data
        llms = [openai.OpenAI(base_url=e.base_url, api_key=e.api_key) for e in episodes]
        replies = [llm.chat.completions.create(model="policy", messages=[user]) for llm in llms]

        client.jobs.pause(job.id)
        first_run.join()
        assert first_run.outcome.status == "paused"
        paused = llms[0].with_options(max_retries=0)
        with pytest.raises(openai.APIStatusError) as waiting:  # no worker serves it: retry later
            paused.chat.completions.create(model="policy", messages=[user])
        assert waiting.value.status_code == 503

        client.jobs.resume(job.id)
        second_run = Worker(job.id, settings)
        for llm, reply, episode in zip(llms, replies, episodes, strict=True):
            history = [user, reply.choices[0].message.model_dump(exclude_none=True), user]
            again = llm.chat.completions.create(model="policy", messages=history)
            assert (
                again.model_extra["keel"]["turn"],
                again.model_extra["keel"]["sequence_index"],
            ) == (1, 1)
            client.rewards.create(episode.id, float(episode.sample_index))
        second_run.join()
        assert second_run.outcome.status == "succeeded"
        assert [len(client.episodes.retrieve(e.id).turns) for e in episodes] == [2, 2]
        sequences = client.metrics.list(job.id, name=metric.AGENT_SEQUENCES)
        assert [p.value for p in sequences] == [4.0]  # 2 episodes × (the turn before + after)
        assert client.jobs.retrieve(job.id).policy_version == 1
