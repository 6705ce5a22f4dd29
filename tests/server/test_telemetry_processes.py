"""Several API processes count together: with `PROMETHEUS_MULTIPROC_DIR` set (as `keel server
--workers N` sets it for its processes) each process's `Telemetry` keeps its counts in that
folder, and any process's exposition adds up all of them. Real processes: prometheus_client
chooses its mode when it is imported."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

COUNT = """
import sys
from keel_server.platform.telemetry import Telemetry
telemetry = Telemetry()
for _ in range(int(sys.argv[1])):
    telemetry.observe_request("POST", "/v1/rewards", 200, 0.002)
telemetry.count_reward("accepted")
sys.stdout.buffer.write(telemetry.exposition())
"""


def _run(count: int, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", COUNT, str(count)], env=env, capture_output=True, check=True
    ).stdout.decode()
    samples = {}
    for family in text_string_to_metric_families(out):
        for sample in family.samples:
            if sample.name in ("keel_http_requests_total", "keel_reward_posts_total"):
                samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def test_the_exposition_adds_up_every_process(tmp_path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert _run(3, env) == {"keel_http_requests_total": 3, "keel_reward_posts_total": 1}
    # A second process sees the first one's counts as well as its own.
    assert _run(5, env) == {"keel_http_requests_total": 8, "keel_reward_posts_total": 2}


def test_without_the_folder_a_process_counts_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    assert _run(3, env) == {"keel_http_requests_total": 3, "keel_reward_posts_total": 1}
    assert _run(5, env) == {"keel_http_requests_total": 5, "keel_reward_posts_total": 1}
