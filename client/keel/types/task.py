"""Wire models of a run's task: where its prompts and built-in rewards come from.

A built-in task (`addition`) or an inline `dataset` of prompts with reference answers, scored by a
verifier; either way a deterministic held-out split is kept for evaluation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from keel.types.common import MAX_INT, Float, FrozenConfig, Int, Text
from keel.types.prompts import MAX_PROMPT_CHARS

# Verifiers that compare a completion with a reference answer (a dataset task's, or a builtin
# reward source's): `math_verify` is the paper's math reward (symbolic equivalence, HF Math-Verify).
VerifierName = Literal["exact_match", "numeric", "math_verify"]
# The worker's task registry (`keel_worker.training.tasks.TASKS`) has exactly these names; a
# contract test keeps them equal, so an unknown task is a 422 at job creation.
TaskName = Literal["addition", "dataset"]

# Far above any dataset keel is built for, low enough that no request can ask a worker for
# unbounded memory (docs/concepts/tenancy.md §7).
MAX_TASK_ITEMS = 1_000_000


class TaskItem(FrozenConfig):
    """One prompt with its reference answer."""

    prompt: Text = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The user turn; the chat template is applied.",
    )
    answer: Text = Field(
        max_length=MAX_PROMPT_CHARS, description="Reference answer the verifier compares against."
    )


class TaskConfig(FrozenConfig):
    """Where prompts and built-in rewards come from.

    `name` is a built-in task (`addition`) or `dataset`, which needs `items` and scores with
    `verifier`. Either way a deterministic held-out split is kept for evaluation.
    """

    name: TaskName = Field(
        "addition",
        description="`addition`: the built-in task, the 100 sums a + b of digits 0–9, rewarded "
        "1 when the completion's last integer is the sum; `dataset`: the `items` given here, "
        "scored by `verifier`.",
    )
    items: list[TaskItem] | None = Field(
        None, max_length=MAX_TASK_ITEMS, description="The prompts of a `dataset` task."
    )
    verifier: VerifierName = Field(
        "numeric", description="How a `dataset` task scores a completion against its answer."
    )
    held_out_fraction: Float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the items kept out of training for eval."
    )
    split_seed: Int = Field(
        0, ge=0, le=MAX_INT, description="Seed of the deterministic train / held-out split."
    )

    @model_validator(mode="after")
    def _items_only_for_datasets(self) -> TaskConfig:
        if self.name == "dataset" and not self.items:
            raise ValueError("task 'dataset' needs a non-empty 'items' list")
        if self.name != "dataset" and self.items is not None:
            raise ValueError(f"built-in task {self.name!r} takes no 'items'; use name='dataset'")
        if self.items is not None and len(self.items) < 2:
            raise ValueError("a dataset needs at least 2 items (one to train, one held out)")
        return self
