"""Contract: vocabularies that stand beside a wire union name exactly its members."""

from __future__ import annotations

import typing

from keel.types import jobs


def _members(annotated) -> tuple[type, ...]:
    return typing.get_args(typing.get_args(annotated)[0])


def test_prompt_source_types_are_the_prompt_source_union():
    types = {m.model_fields["type"].default for m in _members(jobs.PromptSource)}
    assert set(typing.get_args(jobs.PromptSourceType)) == types
    # a stored job may also be a Tinker model, which no `PromptSource` creates
    assert set(typing.get_args(jobs.StoredPromptType)) == types | {"tinker"}


def test_reward_verifiers_are_task_regex_and_the_reference_verifiers():
    literals = typing.get_args(jobs.RewardVerifier)  # Literal["task", "regex"] | VerifierName
    names = {name for literal in literals for name in typing.get_args(literal)}
    assert names == {"task", "regex"} | jobs.REFERENCE_VERIFIERS
