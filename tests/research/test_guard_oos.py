"""The guard out of sample (`research.guard_oos`): the frozen defaults, the demo's recorded run and
a collapse the default guard must still catch, replayed through the real detector."""

import json

from keel.types.guard import GuardConfig
from keel_worker.training.guard import StabilityGuard
from research import guard_oos


def firings(config: GuardConfig, run: guard_oos.Replayable) -> list[tuple[int, str]]:
    """(grad step, trigger) of every firing while the detector replays `run`."""
    guard = StabilityGuard(config)
    return [
        (grad, fired.trigger)
        for step, grad, metrics in run.observations
        for fired in guard.observe(step, metrics)
    ]


def test_the_frozen_defaults_are_todays_but_the_entropy_rule():
    today = GuardConfig().model_dump()
    for trigger, fields in guard_oos.FROZEN.items():
        assert {k: today[trigger][k] for k in fields} == fields, trigger
    assert guard_oos.frozen_config().entropy.reward_window == 0
    assert GuardConfig().entropy.reward_window == guard_oos.ENTROPY_REWARD_WINDOW


def test_make_demo_raises_no_alert_under_the_default_guard_and_did_under_the_frozen_one():
    (demo,) = guard_oos.demo_runs()
    assert not demo.collapsed  # 0.77 -> 1.00 held-out
    assert firings(GuardConfig(), demo) == []
    # The recorded run reproduces the alert `make demo` printed with the frozen defaults.
    assert [t for _, t in firings(guard_oos.frozen_config(), demo)] == ["entropy"]
    record = json.loads(guard_oos.DEMO.read_text())
    assert [e["trigger"] for e in record["guard_events"]] == ["entropy"]


def test_a_collapsing_service_job_still_alerts_before_the_fall_under_the_default_guard():
    runs = [r for r in guard_oos.service_runs() if "lr-collapse-alert" in r.name]
    assert len(runs) == 3 and all(r.collapsed for r in runs)
    for run in runs:
        first = firings(GuardConfig(), run)[0][0]
        assert first < run.collapse_grad_step, run.name


def test_runs_after_the_fit_are_out_of_sample():
    listed = guard_oos.in_sample_names()
    assert "research/results/stability/stress/runs/N8__cispo+R3/seed1.csv" in listed
    assert "research/results/stability/stress/runs/N8__cispo+R3/seed2.csv" not in listed
    after = {r.name for r in guard_oos.suite_runs(in_sample=False)}
    assert "stress:N8/cispo+R3@seed2" in after and "stress:N8/cispo+R3@seed1" not in after


def test_the_reruns_are_their_own_out_of_sample_set():
    reruns = list(guard_oos.rerun_runs())
    names = {r.name for r in reruns}
    assert "rerun:f1-rung3:N1/minirl@seed0" in names
    assert all(r.source == "rerun" and r.observations for r in reruns)
    # No rerun path was on the fit's list: the fit never saw them.
    assert not any("/reruns/" in name for name in guard_oos.in_sample_names())


def test_the_resweep_config_takes_each_chosen_value_over_the_demo_rules_defaults():
    chosen = json.loads(guard_oos.RESWEEP.read_text())["triggers"]
    config = guard_oos.resweep_config(guard_oos.resweep_chosen())
    for trigger, values in chosen.items():
        for field, value in (values["chosen"] or {}).items():
            assert getattr(getattr(config, trigger), field) == value, (trigger, field)
    assert config.entropy.reward_window == guard_oos.ENTROPY_REWARD_WINDOW
    # The fields the re-sweep's grid does not name stay as frozen.
    assert config.kl.action == guard_oos.FROZEN["kl"]["action"]


def test_the_resweep_replaces_the_defaults_only_by_catching_more_without_more_alarms():
    def scores(alarmed, caught):
        unseen = {"stable_alarmed": alarmed, "caught_before": caught}
        return {"unseen by the re-sweep": unseen}

    base = scores(alarmed=1, caught=2)
    assert guard_oos.resweep_adopted({"demo rule": base, "re-sweep": scores(1, 3)})
    assert not guard_oos.resweep_adopted({"demo rule": base, "re-sweep": scores(1, 2)})
    assert not guard_oos.resweep_adopted({"demo rule": base, "re-sweep": scores(2, 5)})
