"""`make demo` (`scripts/demo.py`) on a small budget: the same path as the full demo (`keel up`,
a SmolLM2 job through the SDK with bf16 rollouts, its events, the checkpoint download, the PNG),
checked artifact by artifact, plus a Ctrl-C in the middle of a run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from demo_processes import processes_using, stop_demo

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.py"
SMALL = [
    "--steps",
    "2",
    "--prompts-per-step",
    "2",
    "--group-size",
    "4",
    "--max-new-tokens",
    "8",
    "--eval-size",
    "4",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _home(tmp_path: Path) -> Path:
    """A fresh keel home whose model cache is the repository's `.keel/models`, so the GGUF is
    converted once for the tests and `make demo` together (as re-running the demo does)."""
    home = tmp_path / "dot-keel"
    home.mkdir()
    shared = REPO / ".keel" / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared, target_is_directory=True)
    return home


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _refuses(url: str) -> bool:
    try:
        httpx.get(f"{url}/health/live", timeout=2.0)
    except httpx.ConnectError:
        return True
    return False


def test_demo_small_budget_delivers_every_artifact(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home = _home(tmp_path)
    with socket.socket() as taken:  # the demo must notice a taken port and pick another
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(DEMO), *SMALL, "--data-dir", str(home), "--port", str(port)],
            env=_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert f"port {port} is taken" in out

    [summary_file] = (home / "demo").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    config = summary["config"]
    assert (summary["steps"], summary["seed"]) == (2, 0)
    assert config["algorithm"] == {"name": "minirl"} and config["task"]["name"] == "addition"
    assert (config["rollout"]["precision"], config["train_dtype"]) == ("bf16", "fp32")
    # The worker's compute choice for the bf16 rollouts is served and printed.
    rollout = summary["runtime"]["rollout"]
    assert (rollout["device"], rollout["requested"]) == ("cpu", "bf16")
    assert rollout["compute_dtype"] in ("bf16", "fp32")
    assert re.search(r"bf16 rollouts computed (natively|as fp32 on bf16-rounded weights)", out)
    for key in ("heldout_accuracy_before", "heldout_accuracy_after", "train_reward_last"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert f"{summary['heldout_accuracy_before']:.2f} before" in out
    # Where the job's time went (bench/demo_time.py records it): the step phases add up to the
    # steps' time, and the rest (model load, the evaluations) is what the job took besides.
    split = summary["phase_seconds"]
    phases = ("generate", "score", "recompute", "update", "sync")
    assert abs(sum(split[p] for p in phases) - split["step"]) < 0.5 and split["update"] > 0
    assert split["outside_steps"] > 0
    assert abs(split["step"] + split["outside_steps"] - summary["job_seconds"]) < 0.2

    png = Path(summary["curves_png"])
    assert png.parent == summary_file.parent and png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 10_000  # four panels with curves, not an empty canvas

    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.parent == summary_file.parent and checkpoint.name == "checkpoint-step-2"
    assert str(checkpoint) in out and str(png) in out
    assert f'AutoModelForCausalLM.from_pretrained("{checkpoint}")' in out
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    _assert_trained(model, home)

    # The processes it started are gone; keel's data stays for a later `keel up`.
    url = re.search(r"keel is up at (\S+) ", out).group(1)
    assert f"dashboard: {url}/dashboard (sign in with {home}/admin_key)" in out
    assert _refuses(url)
    assert processes_using(home) == []
    assert (home / "keel.db").is_file() and (home / "admin_key").is_file()


def _assert_trained(model, home: Path) -> None:
    """The downloaded weights are the trained ones: they moved away from the base model."""
    from safetensors.torch import load_file

    [base_dir] = [d for d in (home / "models").iterdir() if (d / "config.json").is_file()]
    base = load_file(base_dir / "model.safetensors")
    trained = model.state_dict()
    changed = [
        name for name, w in base.items() if name in trained and not torch.equal(w, trained[name])
    ]
    assert len(changed) > len(base) // 2


def test_ctrl_c_cancels_the_job_and_stops_keel(tmp_path):
    home = _home(tmp_path)
    cmd = [sys.executable, str(DEMO), *SMALL, "--steps", "50", "--data-dir", str(home)]
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        # Its own session: Ctrl-C is sent to it alone, and on failure its whole group is killed.
        demo = subprocess.Popen(
            cmd,
            env=_env(),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "job running" not in log.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(5)  # mid-setup or mid-step: the cancel is cooperative either way
        demo.send_signal(signal.SIGINT)
        assert demo.wait(120) == 130, log.read_text()
    finally:
        if demo.poll() is None:
            stop_demo(demo, home)  # with the `keel up` it started, which would train on
    text = log.read_text()
    assert "interrupted: cancelling the job" in text and "stopped;" in text
    assert processes_using(home) == []
    with sqlite3.connect(home / "keel.db") as db:
        status, requested = db.execute("SELECT status, requested FROM jobs").fetchone()
    # Cancelled, or (when the worker was stopped before its next check) the cancel is recorded
    # and the next `keel up` finishes it.
    assert status == "cancelled" or (status == "running" and requested == "cancel")
