"""The example harness (examples/lookup_agent.py) for one short step on SmolLM2-135M-Instruct:
the real model calls the `lookup` tool through the `openai` SDK, the tool's answer goes back as
a `tool` message, the model answers, and the turns keel recorded show it, token-exact."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest
from in_process import ADMIN_KEY, job_settings

import keel
from bench.embedded import live_api
from keel_worker.jobrunner.runner import run_job

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lookup_agent.py"


def _example():
    spec = importlib.util.spec_from_file_location("lookup_agent", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_step_of_the_lookup_agent_calls_the_tool(sqlite_url, tmp_path):
    example = _example()
    settings = job_settings(sqlite_url, tmp_path)
    # 2 tasks × 4 episodes: with the few-shot conversation about 6 in 10 episodes call the tool
    # (the example's docstring), so all 8 missing it is a 1-in-1,000 event.
    args = example.parse_args(["--steps", "1", "--tasks-per-step", "2", "--group-size", "4"])
    with live_api(settings) as url, keel.Client(base_url=url, api_key=ADMIN_KEY) as client:
        worker = threading.Thread(target=_run_next_job, args=(client, settings), daemon=True)
        worker.start()
        summary = example.run(client, args)
        worker.join(timeout=60)
        assert summary["status"] == "succeeded" and list(summary["success_by_step"]) == [1]
        episodes = [client.episodes.retrieve(r.id) for r in _rollouts(client, summary["job_id"])]
    called = [e for e in episodes if e.turns and e.turns[0].reply.get("tool_calls")]
    assert called, "no episode called the tool"
    for episode in called:
        first, second = episode.turns
        assert first.reply["tool_calls"][0]["function"]["name"] == "lookup"
        assert [m["role"] for m in second.messages] == ["tool"]  # what the harness added
        assert second.sequence_index == first.sequence_index  # one sequence: append-only
        assert second.context_tokens < 40  # only the tool turn was rendered, not the history


def _run_next_job(client: keel.Client, settings) -> None:
    """The in-process worker: runs the job the example creates, once it exists."""
    import time

    for _ in range(600):
        jobs = client.jobs.list().data
        if jobs:
            run_job(jobs[0].id, settings)
            return
        time.sleep(0.1)


def _rollouts(client: keel.Client, job_id: str):
    return client.rollouts.list(job_id, limit=100).data
