"""What keel's OpenAI-compatible endpoint adds to one model call of an agent episode.

One episode's calls, one at a time, with the unmodified `openai` SDK: through the API (a real
uvicorn server, which checks the episode key and the episode, validates the body and forwards to
the worker's policy server) and, for comparison, straight to that policy server. The worker is the
real job loop (`run_job` on a thread: planning, rendering, the database write of each turn,
answering); its engine's `generate_batched` is timed, so each call's added time is its round trip
at the harness minus the time the engine spent sampling it. Calls are sequential, so no harness
concurrency is in the number (`bench.agent_serving` measures 32 concurrent episodes).

    python -m bench.agent_endpoint            # writes bench/results/agent_endpoint.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai

import keel
from bench.embedded import ADMIN_KEY, live_api
from bench.machine import describe_machine, load_averages
from keel_server.db import make_engine, make_session_factory, session_scope
from keel_server.db.models import Job
from keel_server.migrate import upgrade
from keel_server.platform.security import sealing_key, serve_secret
from keel_server.platform.settings import Settings
from keel_worker.jobrunner import episodes as episode_calls
from keel_worker.jobrunner.runner import run_job

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_ADDED_P50_MS = 20.0


class TimedSampling:
    """`generate_batched` of the worker, timed: one entry per call (calls are sequential)."""

    def __init__(self) -> None:
        self.original = episode_calls.generate_batched
        self.seconds: list[float] = []

    def __call__(self, engine, requests):
        started = time.perf_counter()
        try:
            return self.original(engine, requests)
        finally:
            self.seconds.append(time.perf_counter() - started)


def _measure(client: openai.OpenAI, calls: int, sampling: TimedSampling) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say hello."}]
    round_trips, samples = [], []
    for _ in range(calls):
        before = len(sampling.seconds)
        started = time.perf_counter()
        client.chat.completions.create(model="policy", messages=messages, max_tokens=4)
        round_trips.append(time.perf_counter() - started)
        samples.append(sampling.seconds[before])
    added = [r - s for r, s in zip(round_trips, samples, strict=True)]
    return {
        "calls": calls,
        "round_trip_p50_ms": 1e3 * statistics.median(round_trips),
        "sample_p50_ms": 1e3 * statistics.median(samples),
        "added_p50_ms": 1e3 * statistics.median(added),
        "added_p90_ms": 1e3 * statistics.quantiles(added, n=10)[-1],
    }


def run(calls: int) -> dict[str, Any]:
    sampling = TimedSampling()
    episode_calls.generate_batched = sampling
    with tempfile.TemporaryDirectory() as home:
        url = f"sqlite:///{home}/keel.db"
        upgrade(url)
        settings = Settings(
            home=Path(home), database_url=url, admin_key=ADMIN_KEY, reward_poll_interval_s=0.05
        )
        config = {
            "model": {"name": "tiny-dense"},
            "steps": 1,
            "prompts_per_step": 1,
            "group_size": 2,
            "rollout": {"max_new_tokens": 4},
            "eval_every": 0,
        }
        with live_api(settings) as api, keel.Client(base_url=api, api_key=ADMIN_KEY) as sdk:
            job = sdk.jobs.create(
                config, prompts={"type": "agent", "tasks": [{}]}, reward={"type": "external"}
            )
            worker = threading.Thread(target=run_job, args=(job.id, settings), daemon=True)
            worker.start()
            through_api, direct = sdk.episodes.claim(job.id, max_episodes=2, wait_s=60).data
            via_api = openai.OpenAI(base_url=through_api.base_url, api_key=through_api.api_key)
            _measure(via_api, 3, sampling)  # warm-up: connections, first forward
            result = {"through_api": _measure(via_api, calls, sampling)}
            result["direct_to_worker"] = _measure(
                _direct_client(settings, job.id, direct.id), calls, sampling
            )
            for episode in (through_api, direct):
                sdk.rewards.create(episode.id, 0.0)
            worker.join(timeout=120)
    episode_calls.generate_batched = sampling.original
    return result


def _direct_client(settings: Settings, job_id: str, episode_id: str) -> openai.OpenAI:
    """An `openai` client on the worker's policy server itself, as the API calls it."""
    factory = make_session_factory(make_engine(settings.database_url))
    with session_scope(factory) as session:
        serve_url = session.get(Job, job_id).serve_url
    secret = serve_secret(sealing_key(settings), job_id)
    return openai.OpenAI(
        base_url=f"{serve_url}/episodes/{episode_id}",
        api_key="unused",
        default_headers={"X-Keel-Serve-Secret": secret},
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_endpoint")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    load_before = load_averages()
    result = run(args.calls)
    record = {
        "machine": describe_machine(load_before=load_before, load_after=load_averages()),
        "model": "tiny-dense, 4 new tokens per call",
        "target_added_p50_ms": TARGET_ADDED_P50_MS,
        **result,
        "met": result["through_api"]["added_p50_ms"] <= TARGET_ADDED_P50_MS,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_endpoint.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "agent_endpoint.md").write_text(_markdown(record))
    print(_markdown(record))


def _markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    rows = [
        f"| {side.replace('_', ' ')} | {r['round_trip_p50_ms']:.1f} | {r['sample_p50_ms']:.1f} | "
        f"{r['added_p50_ms']:.1f} | {r['added_p90_ms']:.1f} |"
        for side, r in (
            ("through_api", record["through_api"]),
            ("direct_to_worker", record["direct_to_worker"]),
        )
    ]
    verdict = "met" if record["met"] else "NOT met"
    return "\n".join(
        [
            "# The agent endpoint's cost per call",
            "",
            "Written by `python -m bench.agent_endpoint`: one episode's calls, one at a time, "
            f"{record['through_api']['calls']} each way ({record['model']}).",
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['arch']}); load before "
            f"{m['load_before']}, after {m['load_after']}.",
            "",
            "| path | round trip p50 ms | sampling p50 ms | added p50 ms | added p90 ms |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Added per call through the API, p50: **{record['through_api']['added_p50_ms']:.1f} "
            f"ms** (target ≤ {record['target_added_p50_ms']:g} ms: {verdict}).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
