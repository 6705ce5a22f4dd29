"""Every scalar of every request model follows keel.types.common: numbers are strict (no bool or
str coercion), floats finite, integers bounded within the database's INTEGER, texts NUL-free.
The walk covers every field reachable from the request bodies of the REST API."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Literal, Union, get_args, get_origin

import annotated_types
import pytest
from pydantic import AllowInfNan, BaseModel, Strict, TypeAdapter, ValidationError

from keel.types.common import MAX_INT
from keel.types.jobs import JobCreate
from keel.types.keys import ApiKeyCreate
from keel.types.prompts import PromptBatch
from keel.types.rewards import RewardBatch, RewardCreate

REQUEST_BODIES = (JobCreate, RewardCreate, RewardBatch, PromptBatch, ApiKeyCreate)
# Owned by the model-paths work (KEEL_MODEL_ROOTS): its own length and path rules.
NOT_HERE = {"ModelConfig.name"}


def _leaves(model: type[BaseModel], seen: set) -> typing.Iterator[tuple[str, type, list]]:
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        yield from _walk(f"{model.__name__}.{name}", field.annotation, list(field.metadata), seen)


def _walk(path: str, tp, metadata: list, seen: set):
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        # A `Field(...)` inside an Annotated member of a union arrives as a FieldInfo.
        meta = [m for item in meta for m in getattr(item, "metadata", [item])]
        yield from _walk(path, base, [*metadata, *meta], seen)
    elif origin in (Union, types.UnionType):
        for arg in get_args(tp):
            yield from _walk(path, arg, metadata, seen)
    elif origin in (list, tuple):
        for arg in get_args(tp):
            if arg is not Ellipsis:
                yield from _walk(path, arg, [], seen)  # the field's metadata bound the list
    elif origin is Literal or tp in (bool, type(None)):
        return
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        yield from _leaves(tp, seen)
    elif tp in (int, float, str):
        yield path, tp, metadata


def _all_leaves():
    seen: set = set()
    leaves = [leaf for body in REQUEST_BODIES for leaf in _leaves(body, seen)]
    return [leaf for leaf in leaves if leaf[0] not in NOT_HERE]


def test_the_walk_reaches_the_nested_models() -> None:
    paths = {path for path, _, _ in _all_leaves()}
    # A few fields deep in discriminated unions, to show the walk does not stop early.
    assert {
        "TokenMask.lower",
        "GeoMask.token_cap",
        "WebhookReward.max_attempts",
        "OptimizerConfig.betas",
        "TaskItem.answer",
        "RewardItem.value",
    } <= paths
    assert len(paths) > 50


@pytest.mark.parametrize(("path", "tp", "metadata"), _all_leaves(), ids=lambda x: str(x)[:40])
def test_every_request_scalar_uses_the_wire_types(path, tp, metadata) -> None:
    if tp is float:
        assert Strict() in metadata and AllowInfNan(False) in metadata, path
    elif tp is int:
        assert Strict() in metadata, path
        uppers = [m.le for m in metadata if isinstance(m, annotated_types.Le)]
        uppers += [m.lt for m in metadata if isinstance(m, annotated_types.Lt)]
        assert uppers and max(uppers) <= MAX_INT, f"{path} has no upper bound within MAX_INT"
    else:
        patterns = [getattr(m, "pattern", None) for m in metadata]
        assert r"^[^\x00]*$" in patterns, f"{path} accepts NUL bytes"


@pytest.mark.parametrize("bad", [True, "1.0", float("nan"), float("inf"), -float("inf")])
def test_a_reward_value_is_a_finite_json_number(bad) -> None:
    with pytest.raises(ValidationError):
        RewardCreate.model_validate({"value": bad})
    assert RewardCreate.model_validate({"value": 1}).value == 1.0


@pytest.mark.parametrize("raw", ['{"value": NaN}', '{"value": Infinity}', '{"value": true}'])
def test_a_reward_value_rejects_json_extensions_and_booleans(raw) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(RewardCreate).validate_json(raw)
