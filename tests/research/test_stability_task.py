"""The harness's addition task: disjoint splits, fixed data, exact-answer reward."""

from itertools import islice

from research.stability import task


def test_held_out_split_is_disjoint_from_rl_pool_and_sft_data():
    held = set(task.held_out())
    assert len(held) == 256
    pool = task.rl_pool()
    assert len(pool) == len(set(pool)) == 4096
    assert not held & set(pool)
    stream = task.sft_stream(task.COLD_START_MIXTURES[1])
    assert not held & {next(stream) for _ in range(5000)}


def test_data_is_deterministic_and_mixtures_differ():
    assert task.rl_pool()[:5] == task.rl_pool()[:5]
    long = list(islice(task.sft_stream(task.COLD_START_MIXTURES[2]), 2000))
    short = list(islice(task.sft_stream(task.COLD_START_MIXTURES[1]), 2000))
    share = lambda ps: sum(p.a >= 100 for p in ps) / len(ps)  # noqa: E731
    assert share(long) > 0.7 > 0.3 > share(short)  # p_three_digit 0.8 vs 0.2


def test_prompt_answer_and_exact_reward():
    p = task.Problem(57, 468)
    assert (p.prompt, p.answer) == ("57+468=", "525")
    assert task.score("525", " 525 ") == 1.0
    assert task.score("525", "5250") == 0.0
    assert task.score("525", "") == 0.0
