"""Contract: the worker's objective registry and the SDK's wire models describe the same thing.

- registered objective names == ``ObjectiveName``; IS modes == the ``ISCorrection`` union;
- each objective's keyword-only names (minus ``normalizer``) == its model's fields minus
  ``NON_OBJECTIVE_FIELDS``, and core keeps no defaults (they live on the models);
- the core's Literals (aggregation, advantage) equal the SDK's;
- every model's defaults run through its objective.
"""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from keel.types import algorithm as wire
from keel_worker.core import advantages, aggregation
from keel_worker.core.is_correction import IS_CORRECTIONS
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch


def _keyword_only(fn) -> dict[str, inspect.Parameter]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _union_members(annotated) -> tuple[type, ...]:
    union = typing.get_args(annotated)[0]
    return typing.get_args(union)


def test_registry_names_equal_the_sdk_literal():
    assert set(OBJECTIVES) == set(typing.get_args(wire.ObjectiveName))
    assert set(wire.ALGORITHM_MODELS) == set(OBJECTIVES)
    union_names = {m.model_fields["name"].default for m in _union_members(wire.AlgorithmConfig)}
    assert union_names == set(OBJECTIVES)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_keywords_equal_model_fields(name):
    keywords = _keyword_only(OBJECTIVES[name])
    fields = set(wire.ALGORITHM_MODELS[name].model_fields) - wire.NON_OBJECTIVE_FIELDS
    assert set(keywords) - {"normalizer"} == fields
    assert all(p.default is inspect.Parameter.empty for p in keywords.values()), (
        "core objectives must not carry defaults"
    )


def test_is_modes_and_their_keywords_equal_the_wire_models():
    models = {m.model_fields["mode"].default: m for m in _union_members(wire.ISCorrection)}
    assert set(models) == set(IS_CORRECTIONS)
    for mode, fn in IS_CORRECTIONS.items():
        keywords = _keyword_only(fn)
        assert set(keywords) == set(models[mode].model_fields) - {"mode"}
        assert all(p.default is inspect.Parameter.empty for p in keywords.values())


def test_core_literals_equal_the_sdk_literals():
    assert typing.get_args(wire.LossAggregation) == aggregation.LOSS_AGGREGATIONS
    assert typing.get_args(wire.AdvantageMode) == advantages.ADVANTAGE_MODES


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_model_defaults_run_through_the_objective(name):
    cfg = TypeAdapter(wire.AlgorithmConfig).validate_python({"name": name})
    mask = torch.tensor([[True, True, False], [True, True, True]])
    batch = PolicyBatch(
        logprobs_B_T=torch.full((2, 3), -1.0, requires_grad=True),
        old_logprobs_B_T=torch.full((2, 3), -1.1),
        rollout_logprobs_B_T=torch.full((2, 3), -0.9),
        advantages_B=torch.tensor([1.0, -1.0]),
        mask_B_T=mask,
    )
    kwargs = wire.objective_kwargs(cfg)
    normalizer = aggregation.loss_normalizer(cfg.loss_agg, mask_B_T=mask, constant=8.0)
    out = OBJECTIVES[name](batch, normalizer=normalizer, **kwargs)
    out.loss.backward()
    assert torch.isfinite(batch.logprobs_B_T.grad).all()
    advantages.compute_advantages(torch.tensor([[1.0, 0.0]]), mode=cfg.advantage)


def test_paper_defaults_for_minirl():
    cfg = wire.MiniRLConfig()
    assert (cfg.eps_low, cfg.eps_high) == (0.2, 0.27)
    assert cfg.is_correction == wire.TokenTruncate(cap=5.0)
    assert cfg.is_scope == "full"
    assert cfg.length_norm is False
    assert cfg.loss_agg == "seq_mean_token_sum"
    assert cfg.advantage == "group_mean"


def test_paper_defaults_for_dppo():
    # δ from the authors' verl example (TV 0.15, KL 0.05), C = 10 from their Stable-RL code.
    tv, kl = wire.DPPOTVConfig(), wire.DPPOKLConfig()
    assert (tv.delta_low, tv.delta_high, tv.is_cap) == (0.15, 0.15, 10.0)
    assert (kl.delta_low, kl.delta_high, kl.is_cap) == (0.05, 0.05, 10.0)
    for cfg in (tv, kl):
        assert (cfg.loss_agg, cfg.advantage) == ("seq_mean_token_sum", "group_mean")
        fields = type(cfg).model_fields
        assert all(fields[key].description for key in set(fields) - {"name"}), "field docstrings"
    with pytest.raises(ValidationError):
        wire.DPPOTVConfig(delta_high=1.5)  # p − q never exceeds 1
    with pytest.raises(ValidationError):
        wire.DPPOKLConfig(delta_low=0.0)


def test_models_reject_unknown_fields_and_bad_values():
    adapter = TypeAdapter(wire.AlgorithmConfig)
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "minirl", "clip_ratio": 0.2})
    with pytest.raises(ValidationError):
        adapter.validate_python(
            {"name": "minirl", "is_correction": {"mode": "token_truncate", "c": 5}}
        )
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "grpo", "eps_low": -0.1})
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "ppo"})
    with pytest.raises(ValidationError):
        wire.TokenMask(lower=2.0, upper=1.0)
    with pytest.raises(ValidationError):
        wire.MiniRLConfig(length_norm=True, loss_agg="token_mean")


def test_json_round_trip_keeps_the_nested_correction():
    adapter = TypeAdapter(wire.AlgorithmConfig)
    cfg = adapter.validate_json(
        '{"name": "grpo", "is_correction": {"mode": "token_mask", "lower": 0.5, "upper": 5}}'
    )
    assert wire.objective_kwargs(cfg)["is_correction"] == {
        "mode": "token_mask",
        "lower": 0.5,
        "upper": 5.0,
    }
    assert adapter.validate_json(adapter.dump_json(cfg)) == cfg
