"""The endpoint bench at its smallest: a few sequential calls each way through a real API and a
real job loop; every call's sampling is timed, and what each path adds is what is left."""

from bench import agent_endpoint


def test_a_few_calls_each_way_are_timed_and_the_engine_is_restored():
    original = agent_endpoint.episode_calls.generate_batched
    result = agent_endpoint.run(calls=3)
    assert agent_endpoint.episode_calls.generate_batched is original
    for side in ("through_api", "direct_to_worker"):
        r = result[side]
        assert r["calls"] == 3
        assert 0 < r["sample_p50_ms"] < r["round_trip_p50_ms"]
        assert r["added_p50_ms"] > 0
