"""The per-project request rate across two real API processes (`keel server` twice, on one
PostgreSQL database and one Redis): requests to both together are limited to the project's rate,
not twice it (docs/concepts/tenancy.md §6)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.services]

BURST, RATE_PER_S = 6, 0.05  # a token every 20 s: the test sees the burst and nothing more


def test_two_api_processes_share_a_projects_rate(production_stack, helpers):
    production_stack.env.update(
        KEEL_RATE_LIMIT_PER_S=str(RATE_PER_S), KEEL_RATE_LIMIT_BURST=str(BURST)
    )
    urls = [_api(production_stack, helpers, name) for name in ("api-1", "api-2")]
    admin = {"Authorization": f"Bearer {helpers.admin_key}"}
    created = httpx.post(f"{urls[0]}/v1/keys", json={"project": "team"}, headers=admin)
    headers = {"Authorization": f"Bearer {created.json()['key']}"}

    started = time.monotonic()
    answers = []  # (which process, status) in the order sent, alternating between the two
    with httpx.Client(headers=headers, timeout=30) as client:
        for i in range(3 * BURST):
            url = urls[i % 2]
            answers.append((url, client.get(f"{url}/v1/jobs").status_code))
    refilled = int((time.monotonic() - started) * RATE_PER_S)

    served = [a for a in answers if a[1] == 200]
    # Per-process buckets would serve 2 × BURST here, BURST from each process.
    assert BURST <= len(served) <= BURST + refilled, answers
    assert {status for _, status in answers} == {200, 429}
    assert {url for url, status in answers if status == 429} == set(urls)  # both refuse
    assert {url for url, status in answers if status == 200} == set(urls)  # both served
    refused = httpx.get(f"{urls[1]}/v1/jobs", headers=headers)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 1 / RATE_PER_S


def test_keel_server_runs_its_workers_under_one_rate(production_stack, helpers):
    """`keel server` as compose runs it, with KEEL_API_WORKERS processes on one port: they are
    all there, a project's burst is one burst however the connections were spread, and a
    Prometheus scrape counts the requests of all of them."""
    production_stack.env.update(
        KEEL_RATE_LIMIT_PER_S=str(RATE_PER_S),
        KEEL_RATE_LIMIT_BURST=str(BURST),
        KEEL_API_WORKERS="2",
    )
    url = _api(production_stack, helpers, "api")
    server = production_stack.procs[-1].process.pid
    helpers.wait_until(lambda: len(_workers(server)) == 2, timeout_s=60, what="two workers")
    admin = {"Authorization": f"Bearer {helpers.admin_key}"}
    created = httpx.post(f"{url}/v1/keys", json={"project": "team"}, headers=admin)
    headers = {"Authorization": f"Bearer {created.json()['key']}"}
    # A new connection per request, so the kernel may hand each to either process.
    codes = [httpx.get(f"{url}/v1/jobs", headers=headers).status_code for _ in range(3 * BURST)]
    assert codes == [200] * BURST + [429] * (2 * BURST)
    # Prometheus counts every process's requests, whichever process answers the scrape.
    for _ in range(4):
        scrape = httpx.get(f"{url}/metrics", headers=admin).text
        assert _requests(scrape, "GET", "/v1/jobs") == {"200": BURST, "429": 2 * BURST}


def _requests(scrape: str, method: str, route: str) -> dict[str, int]:
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "keel_http_requests_total" and (
                labels["method"],
                labels["route"],
            ) == (method, route):
                counts[labels["status"]] = int(sample.value)
    return counts


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes under its supervisor `pid`: its children started by
    multiprocessing's spawn (another child is multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def _api(stack, helpers, name: str) -> str:
    """One more `keel server` on the stack's database and Redis, with a log of its own."""
    port = helpers.free_port()
    proc = stack.start(name, helpers.keel_cmd("server", "--port", str(port)))
    url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        assert proc.process.poll() is None, proc.output()
        try:
            return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    helpers.wait_until(live, timeout_s=90, what=f"{name} live")
    return url
