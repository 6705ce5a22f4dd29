"""The stress suite's verifiable task: sort a string of decimal digits.

A prompt is ``"<digits>="`` and the reference answer the same digits in ascending order, e.g.
``"93150="`` → ``"01359"``. With the byte-level tokenizer every digit is one token, so the answer is
exactly as long as the input (plus EOS): lengths are drawn log-uniformly from [``min_len``,
``max_len``] so that answers average about 37 tokens with a tail past 96, long enough for per-token
training–inference differences to accumulate into the sequence-level ratio of
docs/concepts/algorithm.md §1.3 (the suite wants a mean ≥ 32 tokens with some ≥ 96). The reward is
exact match (1.0 or 0.0) of the whole sorted string: one wrong or missing digit fails the response.

Why sorting: the answer is fully determined by the prompt (a binary verifier), every output token
depends on counts over the whole input (a small model gets it wrong in a length-dependent way, so
cold starts at 20–40% pass rate exist), and it needs no tokenizer beyond bytes.

The RL pool, the held-out split and the cold-start SFT mixtures are drawn from seeded generators;
the held-out split is disjoint from the RL pool and from every SFT mixture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from research.stability.problems import Splits, score  # noqa: F401 (score: the task's reward)

RL_POOL_SEED = 3_000
HELD_OUT_SEED = 4_000
MIN_LEN, MAX_LEN = 8, 100
MAX_NEW_TOKENS = MAX_LEN + 8  # room for the longest answer and its EOS, a little slack


@dataclass(frozen=True)
class Problem:
    """One sorting problem: the unsorted digits."""

    digits: str

    @property
    def prompt(self) -> str:
        return f"{self.digits}="

    @property
    def answer(self) -> str:
        return "".join(sorted(self.digits))


@dataclass(frozen=True)
class Mixture:
    """Lengths log-uniform on [min_len, max_len]; digits uniform."""

    name: str
    min_len: int
    max_len: int
    seed: int


RL_MIXTURE = Mixture("rl", MIN_LEN, MAX_LEN, RL_POOL_SEED)
HELD_OUT_MIXTURE = Mixture("held_out", MIN_LEN, MAX_LEN, HELD_OUT_SEED)

# Three cold starts that differ in their SFT data, as the paper's distillation sources do: the RL
# distribution, short inputs only, long inputs only.
COLD_START_MIXTURES: tuple[Mixture, ...] = (
    Mixture("balanced", MIN_LEN, MAX_LEN, 21),
    Mixture("short_heavy", MIN_LEN, 40, 22),
    Mixture("long_heavy", 24, MAX_LEN, 23),
)


def _problem(rng: random.Random, mixture: Mixture) -> Problem:
    n = round(mixture.min_len * (mixture.max_len / mixture.min_len) ** rng.random())
    return Problem("".join(str(rng.randrange(10)) for _ in range(n)))


_SPLITS = Splits(_problem, rl=RL_MIXTURE, held_out=HELD_OUT_MIXTURE)
draw = _SPLITS.draw
held_out = _SPLITS.held_out
rl_pool = _SPLITS.rl_pool
sft_stream = _SPLITS.sft_stream
