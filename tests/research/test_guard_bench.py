"""The guard-in-service bench without training: the job it sends is the stress cell's run with
every trigger armed, and its rules judge hand-made job results as declared."""

import json
from pathlib import Path

from keel.types.jobs import JobCreate
from research import guard_service
from research.guard_service import CASES, job_config, judge_case


def test_the_job_is_the_stress_cell_with_the_guard_armed_and_the_suites_eval():
    case = next(c for c in CASES if c.name == "collapse-rollback")
    config = job_config(case, seed=1, model_dir=Path("/models/cold"))
    job = JobCreate.model_validate({"config": config})  # what the API accepts
    cfg = job.config
    assert (cfg.num_minibatches, cfg.routing_replay, cfg.seed) == (4, "none", 1)
    assert (cfg.rollout.precision, cfg.rollout.top_p, cfg.optimizer.lr) == ("int4", 0.9, 3e-4)
    assert cfg.algorithm.name == "minirl" and not cfg.algorithm.use_clip
    # Every 8 gradient steps is every 2 global steps at N = 4; 64 prompts × 2 samples at T = 1.
    assert (cfg.eval_every, cfg.eval_size, cfg.eval_samples, cfg.eval_temperature) == (
        2,
        64,
        2,
        1.0,
    )
    actions = {
        name: getattr(cfg.guard, name).action
        for name in ("kl", "is_fraction", "clip", "entropy", "grad_norm", "reward", "accuracy")
    }
    assert set(actions.values()) == {"rollback"}
    assert cfg.task.name == "dataset" and len(cfg.task.items) == 4096 + 256


def _result(evals: dict[int, float], events: list[dict], status: str = "paused") -> dict:
    return {
        "cell": "N4/minirl-noclip",
        "seed": 99,
        "num_minibatches": 4,
        "status": status,
        "events": events,
        "metrics": {
            "eval/accuracy": {str(k): v for k, v in evals.items()},
            "eval/accuracy_final": {},
        },
    }


def test_a_pause_before_the_fall_is_caught_and_one_after_it_is_not(monkeypatch):
    monkeypatch.setattr(guard_service, "_unguarded", lambda cell, seed: None)

    # Evals at job steps 1, 3, 5 saw grad steps 0, 8, 16. A pause fired at step 5 (grad 16)
    # after accuracy 0.4 → 0.3 (≥ ½ × 0.4) is in time; 0.4 → 0.1 then a pause is too late.
    def pause(value: float) -> list[dict]:
        return [{"trigger": "accuracy", "action": "pause", "step": 5, "value": value}]

    early = judge_case(_result({1: 0.4, 3: 0.3, 5: 0.25}, pause(0.25)))
    assert (early["caught"], early["fired_grad_step"], early["trigger"]) == (True, 16, "accuracy")
    late = judge_case(_result({1: 0.4, 3: 0.1, 5: 0.1}, pause(0.1)))
    assert late["caught"] is False
    assert late["own_collapse_grad_step"] == 8  # the job's own curve: below ½ × 0.4 from grad 8
    quiet = judge_case(_result({1: 0.4, 3: 0.4}, [], status="succeeded"))
    assert (quiet["caught"], quiet["acting"], quiet["recovered"]) == (False, 0, True)
    assert quiet["own_collapse_grad_step"] is None


def test_alerts_are_counted_apart_from_acting_firings_and_rollback_events(monkeypatch):
    monkeypatch.setattr(guard_service, "_unguarded", lambda cell, seed: None)
    events = [
        {"trigger": "kl", "action": "alert", "step": 2},
        {"trigger": "entropy", "action": "rollback", "step": 3},
        {"to_step": 2, "lr_scale": 0.5},  # the rollback itself, not a firing
    ]
    j = judge_case(_result({1: 0.4, 3: 0.35}, events, status="succeeded"))
    assert (j["alerts"], j["acting"], j["trigger"], j["fired_grad_step"]) == (1, 1, "entropy", 8)


def test_a_rollback_is_judged_on_the_evaluation_it_fired_on_not_on_the_rerun(monkeypatch):
    monkeypatch.setattr(guard_service, "_unguarded", lambda cell, seed: None)
    # The accuracy firing at step 3 saw 0.05 (< ½ × 0.4); the rollback re-ran step 3, whose
    # metric row now reads 0.35. The guard acted after the fall: not caught, yet recovered.
    events = [
        {"trigger": "accuracy", "action": "rollback", "step": 3, "value": 0.05},
        {"to_step": 0, "lr_scale": 0.5},
    ]
    j = judge_case(_result({1: 0.4, 3: 0.35, 5: 0.4}, events, status="succeeded"))
    assert (j["caught"], j["fired_grad_step"], j["recovered"]) == (False, 8, True)


def test_the_unguarded_run_is_the_alert_case_of_the_same_job(monkeypatch, tmp_path):
    monkeypatch.setattr(guard_service, "OUT", tmp_path)
    alert = next(c for c in guard_service.CASES if c.action == "alert")

    # The alert job at seed 99 (N = 1: the evals at job steps 1, 9, 17 saw grad steps 0, 8,
    # 16) fell from 0.4 to 0 by grad step 8; the paused job fired at job step 3 (grad step 2)
    # with only the first eval seen: caught, 6 grad steps ahead of the unguarded collapse.
    def job(evals: dict[str, float], events: list[dict], status: str) -> dict:
        return {
            "cell": alert.cell,
            "seed": 99,
            "num_minibatches": 1,
            "status": status,
            "events": events,
            "step": 3,
            "steps": 64,
            "wall_s": 60.0,
            "metrics": {"eval/accuracy": evals, "eval/accuracy_final": {}},
        }

    (tmp_path / alert.name).mkdir()
    unguarded = job({"1": 0.4, "9": 0.0, "17": 0.0}, [], "succeeded")
    (tmp_path / alert.name / "seed99.json").write_text(json.dumps(unguarded))
    pause = [{"trigger": "entropy", "action": "pause", "step": 3, "value": 0.01}]
    j = judge_case(job({"1": 0.4}, pause, "paused"))
    assert (j["caught"], j["fired_grad_step"], j["unguarded_source"]) == (True, 2, "job")
    assert (j["unguarded_collapse_grad_step"], j["lead_grad_steps"]) == (8, 6)
    # The report's summary counts it: one unguarded collapse, caught; no false alarm possible.
    paused = next(c for c in guard_service.CASES if c.cell == alert.cell and c.action == "pause")
    (tmp_path / paused.name).mkdir()
    paused_job = job({"1": 0.4}, pause, "paused")
    (tmp_path / paused.name / "seed99.json").write_text(json.dumps(paused_job))
    summary = guard_service.report().splitlines()
    assert f"| {paused.name} | 1 | 1 | 1 of 1 | – | 0 | – |" in summary
    assert f"| {alert.name} | 1 | 1 | – | – | 0 | – |" in summary
