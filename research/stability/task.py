"""The synthetic verifiable task of the stability harness: multi-digit addition.

A prompt is ``"<a>+<b>="`` with 2- or 3-digit operands; the reference answer is the decimal sum.
The reward is exact match (1.0 or 0.0) of the response text, cut at the first end-of-sequence,
against that answer: the binary verifier reward R(x, y) of docs/concepts/algorithm.md §4.

The RL prompt pool, the held-out split and the three cold-start SFT mixtures are all drawn here
from seeded generators, so every run of the matrix sees the same data. The held-out split is
disjoint from the RL pool and from every SFT mixture (problems are keyed by their operands).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from research.stability.problems import Splits, score  # noqa: F401 (score: the task's reward)

RL_POOL_SEED = 1_000
HELD_OUT_SEED = 2_000


@dataclass(frozen=True)
class Problem:
    """One addition problem: the prompt text and the exact answer text."""

    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


@dataclass(frozen=True)
class Mixture:
    """How a data set draws its operands.

    ``p_three_digit`` is the probability that an operand has three digits (else two); the two
    operands are drawn independently. The RL distribution is the balanced mixture (0.5).
    """

    name: str
    p_three_digit: float
    seed: int


RL_MIXTURE = Mixture("rl", p_three_digit=0.5, seed=RL_POOL_SEED)
HELD_OUT_MIXTURE = Mixture("held_out", p_three_digit=0.5, seed=HELD_OUT_SEED)

# The three cold starts differ in their SFT data (mixture and sample seed), as the paper's three
# distillation sources do: balanced, mostly short operands, mostly long operands.
COLD_START_MIXTURES: tuple[Mixture, ...] = (
    Mixture("balanced", p_three_digit=0.5, seed=11),
    Mixture("short_heavy", p_three_digit=0.2, seed=12),
    Mixture("long_heavy", p_three_digit=0.8, seed=13),
)


def _operand(rng: random.Random, p_three_digit: float) -> int:
    return rng.randint(100, 999) if rng.random() < p_three_digit else rng.randint(10, 99)


def _problem(rng: random.Random, mixture: Mixture) -> Problem:
    return Problem(_operand(rng, mixture.p_three_digit), _operand(rng, mixture.p_three_digit))


_SPLITS = Splits(_problem, rl=RL_MIXTURE, held_out=HELD_OUT_MIXTURE)
draw = _SPLITS.draw
held_out = _SPLITS.held_out
rl_pool = _SPLITS.rl_pool
sft_stream = _SPLITS.sft_stream
