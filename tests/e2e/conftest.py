"""End-to-end harness: real processes only. `stack` starts the API (`keel server`), Celery
workers (`keel worker`, each in its own process group so a test can SIGKILL one), the reward
service of `reward_service.py`, or the embedded `keel up`, all configured through KEEL_*
variables on the real PostgreSQL and Redis (or SQLite + the filesystem broker); `page` is a
headless Chromium tab for the dashboard tests."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from job_configs import merge_config, tiny_job_config

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "keel_admin_e2e_0123456789abcdef"
WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"
REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def keel_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "keel", *args]


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group: the worker and its pool processes die together."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (keel up then stops its worker), SIGKILL to the group if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Stack:
    tmp: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], **env: str) -> Proc:
        log = self.tmp / f"{name}.log"
        process = subprocess.Popen(
            cmd,
            env={**self.env, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.tmp,
        )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def api(self) -> str:
        port = free_port()
        proc = self.start("api", keel_cmd("server", "--port", str(port)))
        url = f"http://127.0.0.1:{port}"
        self._wait_http(proc, f"{url}/health/live")
        return url

    def worker(self, name: str) -> Proc:
        proc = self.start(name, keel_cmd("worker", "--hostname", f"{name}@%h"))
        wait_until(
            lambda: "ready" in proc.output() or proc.process.poll() is not None,
            timeout_s=120,
            what=f"{name} ready",
        )
        assert proc.process.poll() is None, proc.output()
        return proc

    def reward_service(self, base_url: str) -> RewardService:
        port = free_port()
        service = RewardService(
            f"http://127.0.0.1:{port}/hook", self.tmp / "reward_token", self.tmp / "rewards.jsonl"
        )
        cmd = [
            sys.executable,
            str(HERE / "reward_service.py"),
            str(port),
            WEBHOOK_SECRET,
            str(service.token_file),
            base_url,
            str(service.log_file),
        ]
        proc = self.start("reward-service", cmd)
        wait_until(
            lambda: "reward service on" in proc.output(), timeout_s=60, what="reward service"
        )
        return service

    def _wait_http(self, proc: Proc, url: str) -> None:
        def up() -> bool:
            assert proc.process.poll() is None, proc.output()
            return _http_ok(url)

        wait_until(up, timeout_s=90, what=url)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class RewardService:
    url: str
    token_file: Path
    log_file: Path

    def give_token(self, token: str) -> None:
        tmp = self.token_file.with_suffix(".tmp")
        tmp.write_text(token)
        tmp.replace(self.token_file)

    def posted(self) -> dict[str, float]:
        """Every reward the service posted and the server accepted."""
        if not self.log_file.exists():
            return {}
        lines = [json.loads(x) for x in self.log_file.read_text().splitlines() if x.strip()]
        return {x["id"]: x["value"] for x in lines if x["ok"]}


def base_env(tmp: Path, **keel: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(
        KEEL_HOME=str(tmp / "home"),
        KEEL_ADMIN_KEY=ADMIN_KEY,
        KEEL_HEARTBEAT_INTERVAL_S="0.5",
        KEEL_LEASE_TIMEOUT_S="4",
        KEEL_REWARD_POLL_INTERVAL_S="0.1",
        KEEL_SSE_POLL_INTERVAL_S="0.1",
        KEEL_WEBHOOK_BACKOFF_S="0.2",
        KEEL_WEBHOOK_ALLOW="127.0.0.1",  # the reward service runs on this machine
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update({f"KEEL_{k.upper()}": v for k, v in keel.items()})
    return env


@pytest.fixture
def production_stack(pg_url: str, tmp_path: Path) -> Iterator[Stack]:
    """PostgreSQL + Redis, migrated with `keel migrate`; a queue of its own on Redis."""
    env = base_env(
        tmp_path,
        database_url=pg_url,
        broker_url=REDIS_URL,
        job_queue=f"keel-e2e-{secrets.token_hex(4)}",
    )
    subprocess.run(keel_cmd("migrate"), env=env, check=True, capture_output=True, cwd=tmp_path)
    stack = Stack(tmp_path, env)
    yield stack
    stack.close()


def job_config(**overrides) -> dict:
    """The tiny job, learning fast and checkpointing every step: each e2e job takes well under a
    minute."""
    return merge_config(tiny_job_config(optimizer={"lr": 1e-3}, checkpoint_every=1), overrides)


def guard_pause_job_config() -> dict:
    """A 2-step job whose guard pauses it at step 1 on a deliberately low threshold: a TIS cap of
    0.5 truncates every token of an fp32 rollout (ρ = 1), so `is/truncated_frac` is 1, over the
    `is_fraction` trigger's 0.5."""
    return job_config(
        steps=2,
        algorithm={"name": "minirl", "is_correction": {"mode": "token_truncate", "cap": 0.5}},
        guard={"is_fraction": {"max_frac": 0.5, "patience": 1, "action": "pause"}},
    )


def webhook_reward(service: RewardService, **extra) -> dict:
    return {"type": "webhook", "url": service.url, "secret": WEBHOOK_SECRET, **extra}


CHROMIUM = Path("/usr/bin/chromium")
# The flags that work on these machines (closed network, root, no GPU); see environment docs.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page():
    """A tab of headless Chromium (Debian's `/usr/bin/chromium`, installed by `make browsers`;
    Playwright drives it and never downloads a browser of its own)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "no /usr/bin/chromium: run `make browsers` (Debian's chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(
            viewport={"width": 1400, "height": 1000}, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        context.close()
        browser.close()


@pytest.fixture
def helpers():
    """The functions the e2e tests share (conftest modules cannot be imported by name)."""
    return Helpers


class Helpers:
    admin_key = ADMIN_KEY
    Stack = Stack
    base_env = staticmethod(base_env)
    free_port = staticmethod(free_port)
    keel_cmd = staticmethod(keel_cmd)
    job_config = staticmethod(job_config)
    guard_pause_job_config = staticmethod(guard_pause_job_config)
    webhook_reward = staticmethod(webhook_reward)
    wait_until = staticmethod(wait_until)

    @staticmethod
    def assert_every_step_once(client, job_id: str, steps: int) -> None:
        rows = client.metrics.list(job_id, limit=10_000)
        names_by_step: dict[int, list[str]] = {}
        for row in rows:
            names_by_step.setdefault(row.step, []).append(row.name)
        assert sorted(names_by_step) == list(range(1, steps + 1))
        for names in names_by_step.values():
            assert len(names) == len(set(names)) and "optim/loss" in names

    @staticmethod
    def assert_rewards_kept(client, job_id: str, posted: dict[str, float]) -> None:
        """Every reward the service posted is on its rollout, unchanged."""
        assert posted
        for rollout_id, value in posted.items():
            rollout = client.rollouts.retrieve(rollout_id)
            assert (rollout.status, rollout.reward) == ("rewarded", value), rollout_id

    @staticmethod
    def load_checkpoint(client, job_id: str, dest: Path):
        """Download the newest checkpoint and load it with transformers; returns the model."""
        from transformers import AutoModelForCausalLM

        newest = max(client.checkpoints.list(job_id).data, key=lambda c: c.step)
        path = client.checkpoints.download(newest.id, dest)
        model = AutoModelForCausalLM.from_pretrained(path)
        return newest, model
