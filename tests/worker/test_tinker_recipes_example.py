"""The tinker-cookbook example's parts that need no service: the declared margin against its
pilot, the verdicts on hand-made recipe metrics, the environment a Tinker program gets, and the
client's command line (the recipes themselves run in `make tinker-demo`, from `.venv-tinker`)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner():
    return _load("tinker_cookbook_example", REPO / "examples" / "tinker_recipes.py")


@pytest.fixture(scope="module")
def client():
    return _load("tinker_client_example", REPO / "examples" / "tinker_client.py")


def test_the_declared_margin_follows_from_the_pilot_kept_beside_it(runner):
    pilot = json.loads(runner.PILOT.read_text())
    assert (pilot["groups_per_batch"], pilot["group_size"], pilot["max_tokens"]) == (
        runner.RL_GROUPS_PER_BATCH,
        runner.RL_GROUP_SIZE,
        runner.RL_MAX_TOKENS,
    )
    assert len(pilot["reward_by_step"]) >= 2 * runner.RL_WINDOW
    assert pytest.approx(pilot["stdev_of_step_means"], abs=5e-5) == runner.RL_PILOT_STDEV
    rule = runner.margin_from_pilot(runner.RL_PILOT_STDEV, runner.RL_WINDOW)
    # 3 · 0.0190 · √(2/5) = 0.03605: the constant is the rule rounded up to the next thousandth.
    assert rule == pytest.approx(0.03605, abs=1e-5)
    assert rule <= runner.RL_MIN_GAIN < rule + 0.001


def _rl_metrics(rewards):
    return [{"step": i, "env/all/reward/total": r} for i, r in enumerate(rewards)]


def test_math_rl_meets_its_margin_only_by_the_windows_means(runner):
    k, steps = runner.RL_WINDOW, runner.RL_STEPS
    # first k steps at −0.05, last k at −0.01: a gain of 0.04 ≥ 0.037.
    rising = [-0.05] * k + [-0.03] * (steps - 2 * k) + [-0.01] * k
    verdict = runner.judge_math_rl(_rl_metrics(rising), wall_s=1.0)
    assert verdict["gain"] == pytest.approx(0.04)
    assert verdict["met"]
    # A gain of 0.03 is within three pilot deviations of noise: not met.
    flat = [-0.05] * k + [-0.03] * (steps - 2 * k) + [-0.02] * k
    assert not runner.judge_math_rl(_rl_metrics(flat), wall_s=1.0)["met"]
    # A run cut short is not met, however its reward moved.
    assert not runner.judge_math_rl(_rl_metrics(rising[:-1]), wall_s=1.0)["met"]


def test_sl_compares_whole_epochs(runner):
    per_epoch = runner.SL_CONVERSATIONS // runner.SL_BATCH_SIZE  # 2 batches per epoch
    assert per_epoch == 2
    # epochs' means: (2.0+1.8)/2 = 1.9 ... (1.7+1.7)/2 = 1.7: a drop of 1 − 1.7/1.9 = 10.5 %.
    nll = [2.0, 1.8, 1.8, 1.8, 1.8, 1.7, 1.75, 1.7, 1.7, 1.7]
    metrics = [{"step": i, "train_mean_nll": x} for i, x in enumerate(nll)]
    verdict = runner.judge_sl(metrics, wall_s=1.0)
    assert verdict["nll_by_epoch"] == [1.9, 1.8, 1.75, 1.725, 1.7]
    assert verdict["drop"] == pytest.approx(1 - 1.7 / 1.9)
    assert verdict["met"]
    # 1.9 → 1.72: a drop of 9.5 %, under the declared 10 %.
    metrics[-1]["train_mean_nll"] = metrics[-2]["train_mean_nll"] = 1.72
    assert not runner.judge_sl(metrics, wall_s=1.0)["met"]


def test_a_tinker_program_gets_keels_url_and_a_tml_key(runner, monkeypatch):
    monkeypatch.setenv("KEEL_API_KEY", "keel_admin_should_not_leak")
    monkeypatch.setenv("TINKER_API_KEY", "tml-someone-elses")
    env = runner.tinker_environment("http://127.0.0.1:8123", "keel_sk_abc")
    assert env["TINKER_BASE_URL"] == "http://127.0.0.1:8123/tinker"
    assert env["TINKER_API_KEY"] == "tml-keel_sk_abc"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "KEEL_API_KEY" not in env


def test_the_client_command_line_per_recipe(client):
    rl = client.parse_args(["math-rl", "--tokenizer-dir", "t", "--log-dir", "l", "--steps", "3"])
    assert (rl.command, rl.steps, rl.max_tokens, rl.lora_rank) == ("math-rl", 3, 5, 16)
    sl = client.parse_args(["sl", "--tokenizer-dir", "t", "--log-dir", "l", "--epochs", "2"])
    assert (sl.command, sl.epochs, sl.conversations) == ("sl", 2, 8)
    assert not hasattr(sl, "steps")
    pilot = client.parse_args(["pilot", "--tokenizer-dir", "t", "--out", "o.json"])
    assert not hasattr(pilot, "log_dir")
    with pytest.raises(SystemExit):
        client.parse_args(["pilot", "--tokenizer-dir", "t"])  # --out is required


def test_the_margin_rule_is_three_deviations_of_a_difference_of_means(runner):
    # σ = 0.02, k = 2: the difference of two 2-step means has σ·√(2/2) = 0.02; three of them.
    assert runner.margin_from_pilot(0.02, 2) == pytest.approx(0.06)
    assert runner.margin_from_pilot(0.02, 8) == pytest.approx(3 * 0.02 * math.sqrt(0.25))
