"""Verifiable tasks: prompts, reference answers, reward functions and a held-out split.

A `Task` is plain data plus a verifier; `build_task(TaskConfig)` looks built-in tasks up in
`TASKS` and turns a user's `dataset` into a task. `PromptStream` hands out training prompts in a
deterministic order that depends only on (seed, cursor), so a resumed run sees the same prompts
as an uninterrupted one. Rewards are the binary verifier rewards of docs/concepts/algorithm.md §4
(R ∈ {0, 1}).
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keel.types.training import TaskConfig, TaskItem

Verifier = Callable[[str, str], float]

_INTEGER = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_integer(text: str) -> int | None:
    """The last integer in `text` (regex `-?\\d+`), thousands separators removed."""
    found = _INTEGER.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


def integer_reward(completion: str, answer: str) -> float:
    """1.0 when the last integer of the completion equals the integer answer, else 0.0."""
    return 1.0 if last_integer(completion) == int(answer) else 0.0


def numeric_reward(completion: str, answer: str) -> float:
    """1.0 when the last number of the completion equals the numeric answer (abs tol 1e-6)."""
    found = _NUMBER.findall(completion.replace(",", ""))
    if not found:
        return 0.0
    try:
        expected = float(answer.replace(",", "").strip())
    except ValueError:
        return 0.0
    return 1.0 if abs(float(found[-1]) - expected) <= 1e-6 else 0.0


def exact_match_reward(completion: str, answer: str) -> float:
    """1.0 when the completion equals the answer after trimming whitespace, else 0.0."""
    return 1.0 if completion.strip() == answer.strip() else 0.0


MATH_VERIFY_TIMEOUT_S = 5


def math_verify_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer is mathematically equal to the reference (HF
    Math-Verify: LaTeX or plain expressions, `\\boxed{}`, fractions, symbolic forms), else 0.0.

    A reference without `$` is read as LaTeX math (`\\frac12` and `0.5` both work).
    """
    from math_verify import parse, verify  # a worker-only dependency; sympy is slow to import

    # Math-Verify's timeouts use signal.alarm, which only the main thread may set; elsewhere
    # (a worker thread in tests) it runs without one.
    in_main_thread = threading.current_thread() is threading.main_thread()
    timeout = MATH_VERIFY_TIMEOUT_S if in_main_thread else None
    gold = parse(answer if "$" in answer else f"${answer}$", parsing_timeout=timeout)
    predicted = parse(completion, parsing_timeout=timeout)
    return 1.0 if verify(gold, predicted, timeout_seconds=timeout) else 0.0


VERIFIERS: dict[str, Verifier] = {
    "numeric": numeric_reward,
    "exact_match": exact_match_reward,
    "math_verify": math_verify_reward,
}


@dataclass(frozen=True)
class Task:
    """A verifiable task: training items, held-out items and the reward of one completion."""

    name: str
    train_items: tuple[TaskItem, ...]
    eval_items: tuple[TaskItem, ...]
    verifier: Verifier

    def reward(self, completion: str, item: TaskItem) -> float:
        return self.verifier(completion, item.answer)


def split_items(
    items: Sequence[TaskItem], *, held_out_fraction: float, seed: int
) -> tuple[tuple[TaskItem, ...], tuple[TaskItem, ...]]:
    """Deterministic shuffle-then-cut split; at least one item on each side."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(items) * held_out_fraction)), len(items) - 1)
    eval_ids, train_ids = order[:n_eval], order[n_eval:]
    return tuple(items[i] for i in train_ids), tuple(items[i] for i in eval_ids)


def addition_items() -> list[TaskItem]:
    """All 100 single-digit sums (a, b uniform in 0..9)."""
    return [
        TaskItem(prompt=f"What is {a} + {b}? Answer with just the number.", answer=str(a + b))
        for a in range(10)
        for b in range(10)
    ]


def _addition(cfg: TaskConfig) -> Task:
    train, held_out = split_items(
        addition_items(), held_out_fraction=cfg.held_out_fraction, seed=cfg.split_seed
    )
    return Task(name="addition", train_items=train, eval_items=held_out, verifier=integer_reward)


def _dataset(cfg: TaskConfig) -> Task:
    assert cfg.items is not None  # the config validator guarantees it
    train, held_out = split_items(
        cfg.items, held_out_fraction=cfg.held_out_fraction, seed=cfg.split_seed
    )
    return Task(
        name="dataset", train_items=train, eval_items=held_out, verifier=VERIFIERS[cfg.verifier]
    )


TASKS: dict[str, Callable[[TaskConfig], Task]] = {"addition": _addition, "dataset": _dataset}


def build_task(cfg: TaskConfig) -> Task:
    """`cfg.name` is a `keel.types.training.TaskName`, all of which are registered here."""
    return TASKS[cfg.name](cfg)


class PromptStream:
    """Training prompts in epochs, each a fresh permutation seeded by (seed, epoch).

    The state is one integer, the number of prompts handed out so far (the data cursor).
    """

    def __init__(self, items: Sequence[TaskItem], *, seed: int, cursor: int = 0) -> None:
        if not items:
            raise ValueError("a prompt stream needs at least one item")
        self._items = tuple(items)
        self._seed = seed
        self.cursor = cursor

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self._items)))
        random.Random(f"{self._seed}:{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[TaskItem]:
        taken: list[TaskItem] = []
        while len(taken) < n:
            epoch, offset = divmod(self.cursor, len(self._items))
            order = self._epoch_order(epoch)
            chunk = order[offset : offset + n - len(taken)]
            taken.extend(self._items[i] for i in chunk)
            self.cursor += len(chunk)
        return taken
