"""The agent-serving bench at its smallest (tiny model, 4 episodes × 2 calls of 4 tokens): both
sides sample the same tokens, every call comes back with its time split, the results files hold
the summary."""

import json

from bench import agent_serving, agent_serving_report


def test_one_repeat_on_the_tiny_model_samples_the_same_work_on_both_sides(tmp_path):
    work = agent_serving.Work(model="tiny-dense", episodes=4, calls=2, new_tokens=4)
    record = agent_serving.measure(
        work, repeats=1, out=tmp_path, cache_dir=tmp_path / "models", warmup=False
    )

    assert json.loads((tmp_path / "agent_serving.json").read_text()) == record
    assert "served / engine" in (tmp_path / "agent_serving.md").read_text()
    (repeat,) = record["repeats"]
    engine, served, floor = repeat["engine"], repeat["served"], repeat["floor"]
    assert engine["tokens"] == served["tokens"] == 4 * 2 * 4
    assert floor["tokens"] == 0
    for side in (served, floor):
        calls = side["calls"]
        assert [(c["episode"], c["call"]) for c in calls] == [
            (e, c) for e in range(4) for c in (0, 1)
        ]
        assert sum(side["batches"]) == 8
        for call in calls:
            parts = sum(call[f"{k}_s"] for k in agent_serving_report.PARTS)
            assert abs(parts - call["added_s"]) < 1e-9  # the segments split the added time
            assert call["added_s"] > 0
    assert all(c["round_trip_s"] > c["generate_s"] > 0 for c in served["calls"])
    assert all(c["generate_s"] == 0 for c in floor["calls"])
    summary = record["summary"]
    assert summary["ratio"] == summary["served_tokens_per_s"] / summary["engine_tokens_per_s"]
    assert set(summary["segments_p50_s"]) == {"served", "floor"}
