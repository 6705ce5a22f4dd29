"""The same webhook flow on the embedded deployment: `keel up` (API + one worker subprocess,
SQLite and the Celery filesystem broker under its home folder), no other servers."""

from __future__ import annotations

import json
import re
import stat
import subprocess

import pytest
import torch

import keel

pytestmark = pytest.mark.slow


def test_webhook_job_on_keel_up(tmp_path, helpers):
    home = tmp_path / "dot-keel"
    env = helpers.base_env(tmp_path)
    env.pop("KEEL_ADMIN_KEY")  # keel up makes one and prints it
    env.pop("KEEL_WEBHOOK_ALLOW")  # keel up allows loopback by itself
    env["KEEL_HOME"] = str(home)
    stack = helpers.Stack(tmp_path, env)
    try:
        port = helpers.free_port()
        cmd = helpers.keel_cmd("up", "--port", str(port), "--home", str(home))
        up = stack.start("keel-up", cmd)
        banner = helpers.wait_until(
            lambda: re.search(r"admin key: (\S+)", up.output()), timeout_s=90, what="keel up"
        )
        base_url = f"http://127.0.0.1:{port}"
        client = keel.Client(base_url=base_url, api_key=banner.group(1), max_retries=5)
        helpers.wait_until(lambda: _ready(client), timeout_s=60, what="the API")
        service = stack.reward_service(base_url)

        job = client.jobs.create(helpers.job_config(), reward=helpers.webhook_reward(service))
        service.give_token(job.reward_token)
        done = client.jobs.wait(job.id, timeout_s=240, poll_interval_s=0.5)

        assert (done.status, done.step) == ("succeeded", 2)
        helpers.assert_every_step_once(client, job.id, steps=2)
        helpers.assert_rewards_kept(client, job.id, service.posted())
        assert (home / "keel.db").is_file() and (home / "broker").is_dir()
        private = [home, home / "keel.db", home / "broker", home / "secret_key", home / "artifacts"]
        assert {p.name: stat.S_IMODE(p.stat().st_mode) & 0o077 for p in private} == dict.fromkeys(
            [p.name for p in private], 0
        )  # state files are the owner's only
        checkpoint, model = helpers.load_checkpoint(client, job.id, tmp_path / "model")
        assert checkpoint.step == 2
        with torch.no_grad():
            assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
        assert (home / "admin_key").read_text().strip() == banner.group(1)
        _cli_sees_the_job(helpers, env, base_url, banner.group(1), job.id, tmp_path)
    finally:
        stack.close()


def _cli_sees_the_job(helpers, env, base_url: str, key: str, job_id: str, tmp_path) -> None:
    """`keel jobs list|show|events` and `keel checkpoints list|download` on the finished job."""
    auth = ["--base-url", base_url, "--api-key", key]

    def keel_cli(*args: str) -> str:
        done = subprocess.run(
            helpers.keel_cmd(*args, *auth), env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert job_id in keel_cli("jobs", "list") and "succeeded" in keel_cli("jobs", "list")
    assert json.loads(keel_cli("jobs", "show", job_id))["status"] == "succeeded"
    events = [json.loads(line) for line in keel_cli("jobs", "events", job_id).splitlines()]
    assert events[-1]["data"]["status"] == "succeeded"
    checkpoint_id = keel_cli("checkpoints", "list", job_id).split()[0]
    dest = tmp_path / "cli-model"
    assert keel_cli("checkpoints", "download", checkpoint_id, str(dest)).strip() == str(dest)
    assert (dest / "config.json").is_file()


def _ready(client: keel.Client) -> bool:
    try:
        return client.health.ready().status == "ok"
    except keel.KeelError:
        return False
