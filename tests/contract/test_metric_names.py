"""Contract: the metric vocabulary (`keel.types.metric_names`) is exactly what keel emits.

Tiny training steps in-process cover every name the trainer, the evaluation and the guard write;
the service job loop's own names (`JOB_LOOP_METRICS`) are checked where a job runs
(tests/worker/test_tasks_logging.py, test_tasks_rewards.py), and an agent job's
(`AGENT_METRICS`) in tests/worker/test_agent_jobs.py. The dashboard charts only names of
the vocabulary, and the wire docs name only real ones.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from keel.types import metric_names as metric
from keel.types.metrics import MetricPoint, is_documented

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "worker" / "training"))  # training_helpers

# A guard trigger that fires on any clipped token (lr 1e-2 moves the second mini-batch out of
# the clip range at every step), as an alert so the run goes on.
CLIP_ALERT = {"clip": {"max_frac": 1e-6, "patience": 1, "action": "alert"}}
TINY_STEPS = {
    # MoE with R2, an eval before and after the one step, the clip alert.
    "moe": {"routing_replay": "R2", "eval_every": 1, "steps": 1, "guard": CLIP_ALERT},
    # DPPO's mask reports its divergences.
    "dppo": {"model": {"name": "tiny-dense"}, "algorithm": {"name": "dppo_tv"}, "steps": 1},
}


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> dict[str, set[str]]:
    from training_helpers import parity_reward, tiny_config

    from keel_worker.training.run import train

    names = {}
    for case, overrides in TINY_STEPS.items():
        workdir = tmp_path_factory.mktemp(case)
        results = train(tiny_config(**overrides), workdir=workdir, reward_fn=parity_reward)
        names[case] = set().union(*(r.metrics for r in results))
    return names


def test_every_name_a_tiny_step_emits_is_documented(emitted):
    for case, names in emitted.items():
        assert not {n for n in names if not is_documented(n)}, case


def test_tiny_steps_emit_every_documented_name(emitted):
    """Exactly: every fixed name but the job loop's, every eval metric's `_final`, the per-layer
    routing names of the tiny MoE's layers and the trigger that fired."""
    seen = set().union(*emitted.values())
    fixed = set(metric.METRICS) - metric.JOB_LOOP_METRICS - metric.AGENT_METRICS
    assert fixed - seen == set(), "documented but never emitted"
    assert {metric.final(n) for n in metric.EVAL_METRICS} <= seen
    assert metric.guard_trigger("clip") in seen
    layers = {n for n in seen if re.fullmatch(r"routing/\w+_L\d+", n)}
    assert layers == {
        metric.per_layer(p, i)
        for p in (metric.ROUTING_INFER_VS_TRAIN, metric.ROUTING_OLD_VS_CURRENT)
        for i in range(4)
    }


def test_names_outside_the_vocabulary_are_not_documented():
    for name in (
        "train/reward_mean",
        "mismatch/k3_kl",
        "guard/nope",
        "reward/mean_final",
        "routing/infer_vs_train_Lx",
        "eval/accuracy",
    ):
        assert is_documented(name) == (name == "eval/accuracy"), name


def _js_table(script: str, const: str) -> str:
    match = re.search(rf"^const {const} = \[\n(.*?)^\];", script, re.S | re.M)
    assert match, f"dashboard.js has no {const} table: this test is stale"
    return match.group(1)


def test_the_dashboard_charts_only_documented_names():
    script = (ROOT / "server/keel_server/api/dashboard/dashboard.js").read_text()
    charted = re.findall(r'\["([a-z_]+/[a-z_0-9]+)", "', _js_table(script, "CHARTS"))
    per_layer = re.findall(r'\["([a-z_]+/[a-z_]+_L)", "', _js_table(script, "HEATMAPS"))
    assert charted and per_layer
    assert [n for n in charted if not is_documented(n)] == []
    assert [p for p in per_layer if not is_documented(p + "0")] == []


def test_the_wire_docs_name_only_real_metrics():
    description = MetricPoint.model_fields["name"].description
    named = re.findall(r"`([a-z_]+/[a-z_0-9]+)`", description)
    assert named and all(is_documented(n) for n in named)
