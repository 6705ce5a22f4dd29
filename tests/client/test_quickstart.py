"""README's SDK quickstart, run as written against the real app and worker, in-process.

The block is taken from README.md verbatim; only what a test machine cannot do differs: the
model and step count are swapped for the tiny job (SmolLM2 takes minutes per step here), and
`keel.Client` reaches the in-process app (an injected httpx client; the placeholder API key
becomes the admin key). The worker is `run_job` in a thread, as in the worker tests.
"""

from __future__ import annotations

import builtins
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from job_configs import tiny_job_config
from sqlalchemy import select

import keel
from keel_server.db import session_scope
from keel_server.db.models import Job
from keel_worker.jobrunner.runner import run_job

BASE_URL = "http://testserver"  # the in-process app's (the `http` fixture's) base URL
README = Path(__file__).resolve().parents[2] / "README.md"
DOCUMENTED_CONFIG = '{"model": {"name": "smollm2-135m-instruct"}, "steps": 8}'


def _quickstart() -> str:
    text = README.read_text()
    section = text[text.index("## SDK quickstart") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.splitlines()) <= 10
    assert DOCUMENTED_CONFIG in code
    return code.replace(DOCUMENTED_CONFIG, repr(tiny_job_config()))


def _run_the_first_job(sessions, settings, outcome: list) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope(sessions) as session:
            job_id = session.execute(select(Job.id)).scalars().first()
        if job_id is not None:
            outcome.append(run_job(job_id, settings))
            return
        time.sleep(0.05)


def test_the_readme_quickstart_runs(http, settings, sessions, tmp_path, monkeypatch, capsys):
    admin_key = settings.admin_key

    def client(*, base_url: str, api_key: str) -> keel.Client:
        assert base_url == "http://127.0.0.1:8000"
        key = admin_key if api_key == "<your API key>" else api_key
        return keel.Client(base_url=BASE_URL, api_key=key, http_client=http, max_retries=0)

    shim = SimpleNamespace(Client=client)

    def imports(name, *args, **kwargs):
        return shim if name == "keel" else builtins.__import__(name, *args, **kwargs)

    outcome: list = []
    worker = threading.Thread(target=_run_the_first_job, args=(sessions, settings, outcome))
    worker.start()
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__builtins__": {**vars(builtins), "__import__": imports}}
    try:
        exec(compile(_quickstart(), "README.md quickstart", "exec"), scope)
    finally:
        worker.join(120)
    assert outcome and outcome[0].status == "succeeded"
    job = scope["job"]
    assert (job.status, job.step) == ("succeeded", 2)
    downloaded = Path(capsys.readouterr().out.strip().split("\r")[-1].split("\n")[-1])
    assert downloaded == Path("my-model") and (tmp_path / "my-model" / "config.json").exists()
    # Every rollout was scored through the reward token, 1 exactly where it equals its reference.
    admin = keel.Client(base_url=BASE_URL, api_key=admin_key, http_client=http, max_retries=0)
    rollouts = admin.rollouts.list(job.id, limit=100).data
    assert len(rollouts) == 8 and all(r.status == "rewarded" for r in rollouts)
    assert all(r.reward == float(r.completion.strip() == r.reference) for r in rollouts)
