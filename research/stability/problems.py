"""What every task of the harness shares: seeded, disjoint data splits and the exact-answer reward.

A task module supplies `problem(rng, mixture)` (one random problem with `.prompt` and `.answer`)
and its RL and held-out mixtures (each with a `seed`); `Splits` turns that into the held-out split
(drawn first, so every other set can exclude it), the RL pool and the endless SFT stream of a
cold-start mixture, all deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from keel_worker.training.tasks import exact_match_reward


def score(answer: str, response_text: str) -> float:
    """Exact-answer reward (1.0 or 0.0): keel's `exact_match_reward`, whitespace trimmed."""
    return exact_match_reward(response_text, answer)


class Splits:
    """The data of one task, drawn from `problem` under each mixture's seed."""

    def __init__(self, problem: Callable[[random.Random, Any], Any], *, rl, held_out) -> None:
        self.problem = problem
        self.rl_mixture = rl
        self.held_out_mixture = held_out

    def draw(self, mixture, n: int, *, exclude: Iterable = ()) -> list:
        """``n`` distinct problems from ``mixture``, none of them in ``exclude``."""
        rng = random.Random(mixture.seed)
        seen = set(exclude)
        out: list = []
        while len(out) < n:
            problem = self.problem(rng, mixture)
            if problem not in seen:
                seen.add(problem)
                out.append(problem)
        return out

    def held_out(self, n: int = 256) -> list:
        """The evaluation split, drawn first so every other set can exclude it."""
        return self.draw(self.held_out_mixture, n)

    def rl_pool(self, n: int = 4_096, *, held_out_size: int = 256) -> list:
        """The RL prompts (the paper uses 4,096 prompts), disjoint from the held-out split."""
        return self.draw(self.rl_mixture, n, exclude=self.held_out(held_out_size))

    def sft_stream(self, mixture, *, held_out_size: int = 256) -> Iterator:
        """An endless stream of SFT examples for one cold start, never from the held-out split."""
        rng = random.Random(mixture.seed)
        excluded = set(self.held_out(held_out_size))
        while True:
            problem = self.problem(rng, mixture)
            if problem not in excluded:
                yield problem
