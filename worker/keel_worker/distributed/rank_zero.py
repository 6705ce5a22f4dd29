"""Rank 0 samples and scores; every rank receives the same batch.

Each step's rollouts come from the engine copy on rank 0, with the step's seed, exactly as one
process samples them, and reach the other ranks by one broadcast on the side group
(`group.DataParallel.objects`, bounded by the rollout timeout). The batch is then the same on
every rank to the bit, so the rewards, group-mean advantages and the shuffle into mini-batches
are too, and the step's math is one process's. Sampling each rank's share of the prompts instead
would give the same distribution but not the same tokens: a prompt's samples depend on the batch
it is decoded in (one generator, padding widths), and the weights would no longer match a
one-process run to 1e-6. The cost: the other ranks' CPUs idle while rank 0 decodes (a GPU
deployment decodes on vLLM, which batches all prompts anyway).

Scoring runs on rank 0 alone (a reward source backed by the database is asked once) and its
rewards are broadcast the same way. A failure on rank 0 is broadcast too, so the other ranks raise
at once instead of waiting out the timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from keel_worker.distributed.group import DataParallel
from keel_worker.engines.base import RolloutBatch, RolloutEngine

T = TypeVar("T")


class RankZeroFailed(RuntimeError):
    """Rank 0 raised while producing what the other ranks wait for."""


def from_rank_zero(dp: DataParallel, make: Callable[[], T], *, what: str) -> T:
    """`make()` on rank 0, its result on every rank (one broadcast on the side group)."""
    box: list[Any] = [None]
    if dp.is_writer:
        try:
            box[0] = ("ok", make())
        except BaseException as exc:
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
            dist.broadcast_object_list(box, src=0, group=dp.objects)
            raise
    dist.broadcast_object_list(box, src=0, group=dp.objects)
    status, value = box[0]
    if status != "ok":
        raise RankZeroFailed(f"rank 0 failed while producing the {what}: {value}")
    return value


class RankZeroEngine:
    """The rollout engine of a data-parallel run: rank 0 owns the engine (`engine`, None on the
    other ranks); `generate` is collective (every rank calls it, all get rank 0's batch) and so is
    `load_weights` (every rank gathers each sharded tensor, rank 0 copies it into its engine)."""

    def __init__(self, engine: RolloutEngine | None, dp: DataParallel) -> None:
        if dp.is_writer and engine is None:
            raise ValueError("rank 0 needs the rollout engine")
        self.engine = engine
        self.dp = dp

    def generate(self, prompt_ids: list[list[int]], **kwargs: Any) -> RolloutBatch:
        return from_rank_zero(
            self.dp, lambda: self.engine.generate(prompt_ids, **kwargs), what="rollouts"
        )

    def load_weights(self, model: nn.Module) -> None:
        gathered = GatheredPolicy(model)
        if self.engine is not None:
            self.engine.load_weights(gathered)
        gathered.drain()  # the other ranks (and anything the engine skipped) join every gather

    def __getattr__(self, name: str) -> Any:
        # Anything else an engine offers (vLLM's policy_version, ...) is rank 0's engine's.
        engine = self.__dict__.get("engine")
        if engine is None:
            raise AttributeError(f"{name}: only rank 0 holds the rollout engine")
        return getattr(engine, name)


class GatheredPolicy:
    """A sharded policy seen as a plain one: `state_dict().items()` yields each tensor whole,
    all-gathered one at a time (the default group's collectives, so bounded by the collective
    timeout), in the same order on every rank. `engines.precision.copy_weights` and vLLM's
    `load_weights` read a policy through `state_dict()` alone."""

    def __init__(self, model: nn.Module) -> None:
        self._tensors = _full_tensors(model)

    def state_dict(self) -> _OnePass:
        return _OnePass(self._tensors)

    def drain(self) -> None:
        for _ in self._tensors:
            pass


class _OnePass:
    def __init__(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
        self._tensors = tensors

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._tensors


def _full_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    with torch.no_grad():
        for name, value in model.state_dict().items():
            yield name, value.full_tensor() if isinstance(value, DTensor) else value


def rank_zero_scores(
    dp: DataParallel, score: Callable[[Sequence[Any]], Sequence[float | None]]
) -> Callable[[Sequence[Any]], list[float | None]]:
    """`score` run on rank 0 alone, its rewards on every rank."""

    def scored(rollouts: Sequence[Any]) -> list[float | None]:
        return from_rank_zero(dp, lambda: list(score(rollouts)), what="rewards")

    return scored
