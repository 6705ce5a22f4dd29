"""Built-in tasks and verifiers: the single-digit addition task and user datasets."""

from typing import get_args

import pytest

from keel.types.training import TaskConfig, TaskItem, VerifierName
from keel_worker.training.tasks import (
    VERIFIERS,
    PromptStream,
    build_task,
    exact_match_reward,
    integer_reward,
    last_integer,
    math_verify_reward,
    numeric_reward,
)


def test_addition_prompts_match_the_issue():
    task = build_task(TaskConfig())
    items = task.train_items + task.eval_items
    assert len(items) == 100
    assert len(task.eval_items) == 20
    assert TaskItem(prompt="What is 7 + 8? Answer with just the number.", answer="15") in items
    assert not set(task.train_items) & set(task.eval_items)


def test_split_is_deterministic_and_seeded():
    a, b = build_task(TaskConfig()), build_task(TaskConfig())
    assert a.eval_items == b.eval_items
    assert build_task(TaskConfig(split_seed=1)).eval_items != a.eval_items


def test_last_integer_reward():
    assert last_integer("3 + 4 = 7.") == 7
    assert last_integer("The answer is 1,234") == 1234
    assert last_integer("it is -3") == -3
    assert last_integer("no digits") is None
    item = TaskItem(prompt="What is 9 + 8?", answer="17")
    task = build_task(TaskConfig())
    assert task.reward("9 + 8 = 17", item) == 1.0
    # The LAST integer counts: restating the question then answering wrongly fails.
    assert task.reward("17? No: 9 + 8 = 18", item) == 0.0
    assert integer_reward("The sum is 17.", "17") == 1.0


def test_dataset_verifiers():
    assert numeric_reward("so x = 2.50", "2.5") == 1.0
    assert numeric_reward("so x = 2.51", "2.5") == 0.0
    assert numeric_reward("nothing", "2.5") == 0.0
    assert exact_match_reward("  Paris\n", "Paris") == 1.0
    assert exact_match_reward("paris", "Paris") == 0.0
    items = [TaskItem(prompt=f"q{i}", answer=str(i)) for i in range(10)]
    task = build_task(TaskConfig(name="dataset", items=items, verifier="exact_match"))
    assert len(task.train_items) == 8 and len(task.eval_items) == 2
    assert task.reward("3", TaskItem(prompt="q3", answer="3")) == 1.0


def test_every_wire_verifier_name_has_a_verifier():
    assert set(VERIFIERS) == set(get_args(VerifierName))


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("The answer is $\\frac{1}{2}$.", "0.5", 1.0),  # symbolic equality, not string equality
        ("so the result is \\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}", 1.0),
        ("7 + 8 = 15", "15", 1.0),
        ("7 + 8 = 16", "15", 0.0),
        ("no number here", "15", 0.0),
        ("$x = 2$ or maybe $\\frac{1}{3}$", "\\frac{1}{2}", 0.0),
    ],
)
def test_math_verify_checks_mathematical_equivalence(completion, answer, expected):
    assert math_verify_reward(completion, answer) == expected


def test_math_verify_runs_outside_the_main_thread():
    # Math-Verify's signal-based timeout cannot run in a thread; the verifier must still work.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_verify_reward, "$\\frac{2}{4}$", "0.5").result() == 1.0


def test_prompt_stream_resumes_from_its_cursor():
    items = [TaskItem(prompt=f"q{i}", answer=str(i)) for i in range(5)]
    whole = PromptStream(items, seed=3)
    first, second = whole.take(4), whole.take(4)  # crosses an epoch boundary
    resumed = PromptStream(items, seed=3, cursor=4)
    assert resumed.take(4) == second
    assert sorted(i.prompt for i in first + second[:1]) == sorted(i.prompt for i in items)
    assert whole.cursor == 8
