"""The service-overhead bench at its smallest: one pair of each part, 2 steps of a tiny job; the
results files hold both sides of both parts, and the sides really ran the same work."""

import json

from bench import service_overhead

SMALL = {
    **service_overhead.WORK,
    "prompts_per_step": 2,
    "group_size": 2,
    "micro_batch_size": 4,
    "rollout": {"max_new_tokens": 4},
    "checkpoint_every": 1,
}


def test_one_pair_of_each_part_writes_both_sides_and_the_sides_did_the_same_work(tmp_path):
    for part in ("overhead", "replay"):
        service_overhead.measure(part, repeats=1, steps=2, out=tmp_path, work=SMALL, warmup=False)
    results = json.loads((tmp_path / "service_overhead.json").read_text())
    assert {"machine", "overhead", "replay"} <= results.keys()
    report = (tmp_path / "service_overhead.md").read_text()
    assert "## overhead" in report and "## replay" in report

    overhead = results["overhead"]
    train, service = overhead["runs"]
    assert (train["side"], service["side"]) == ("train", "service")
    assert service["config_identical"] is True
    assert (service["status"], service["run_outcome"]) == ("succeeded", "succeeded")
    for run in (train, service):
        assert run["status"] == "succeeded" and run["steps_done"] == 2
        assert run["checkpoint_steps"] == [1, 2]
        assert len(run["step_s"]) == 2 and all(t > 0 for t in run["step_s"])
        assert run["cpu_s"] > 0 and 0 < sum(run["step_s"]) < run["wall_s"]
        assert run["replay_mode"] == [0.0, 0.0]
    # Same config and seed, same prompts: the service's steps sampled what train()'s did.
    assert service["length_mean"] == train["length_mean"]
    assert service["reward_mean"] == train["reward_mean"]
    summary = overhead["summary"]
    assert summary["ratio"] == service["wall_s"] / train["wall_s"]
    assert len(summary["pair_ratios"]) == 1

    replay = results["replay"]
    none, r3 = replay["runs"]
    assert (none["routing_replay"], r3["routing_replay"]) == ("none", "R3")
    assert none["replay_mode"] == [0.0, 0.0] and r3["replay_mode"] == [3.0, 3.0]
    for run in (none, r3):
        assert run["steps_done"] == 2 and run["median_step_s"] == run["step_s"][1]
    assert replay["summary"]["ratio"] == r3["median_step_s"] / none["median_step_s"]
