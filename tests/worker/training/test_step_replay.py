"""Routing Replay in the training step: `auto` measures and follows its decision, and replay that
cannot work fails loudly (dense model, an MoE family keel cannot hook, no or misshapen engine
routes) instead of running without replay."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from training_helpers import parity_reward, tiny_config

from keel.types.routing import (
    dense_replay_message,
    missing_routes_message,
    unsupported_moe_message,
)
from keel.types.training import TaskItem
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import is_moe_model, load_model
from keel_worker.engines.routing_replay import RoutingReplayError
from keel_worker.training.replay import replay_hooks
from keel_worker.training.replay_auto import (
    MODE_CODES,
    REASONS,
    RoutingMeasurement,
    choose_replay,
)
from keel_worker.training.step import Trainer

ITEMS = [TaskItem(prompt=f"What is {a} + 1?", answer=str(a + 1)) for a in range(2)]


def _trainer(config, cache_dir, wrap=None):
    loaded = load_model(config.model.name, cache_dir=cache_dir)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision=config.rollout.precision)
    engine = wrap(engine) if wrap else engine
    return Trainer(config, loaded.model, loaded.tokenizer, engine, is_moe=loaded.is_moe)


def test_auto_runs_its_prior_then_the_mode_its_measurement_chose(cache_dir):
    config = tiny_config(rollout={"precision": "fp8"}, routing_replay_every=1)
    auto = _trainer(config, cache_dir)
    fixed = _trainer(tiny_config(rollout={"precision": "fp8"}, routing_replay="R2"), cache_dir)
    prior = auto.auto.decision
    first = auto.step(ITEMS, parity_reward, seed=7)
    fixed.step(ITEMS, parity_reward, seed=7)
    # Step 1 ran the prior for N = 2 (R2): the same update as a fixed R2 run, bit for bit.
    assert (prior.mode, first["routing/replay_mode"]) == ("R2", MODE_CODES["R2"])
    assert first["routing/replay_reason"] == REASONS.index("prior")
    for (name, p), q in zip(auto.model.named_parameters(), fixed.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    # Its decision is the rule applied to step 1's per-layer measurements.
    measured = RoutingMeasurement.from_metrics(1, first, auto.replay.num_layers)
    assert measured.infer_vs_train > 0 and measured.old_vs_current > 0  # fp8, lr 1e-2
    expected = choose_replay(measured, num_minibatches=2, current=prior)
    assert auto.auto.decision == expected
    second = auto.step(ITEMS, parity_reward, seed=8)
    assert second["routing/replay_mode"] == MODE_CODES[expected.mode]
    assert auto.auto.decision.step == 2  # every=1: step 2 decided again


def test_routing_replay_every_spaces_the_decisions(cache_dir):
    decided = {}
    for every in (0, 2):
        trainer = _trainer(tiny_config(routing_replay_every=every), cache_dir)
        for seed in range(3):
            trainer.step(ITEMS, parity_reward, seed=seed)
        decided[every] = trainer.auto.decision.step
    assert decided == {0: 1, 2: 3}  # once after step 1; or steps 1 and 3


def test_dense_model_with_replay_fails_with_the_apis_message(cache_dir):
    # A hub id that turned out dense: the worker learns it only when the model is loaded.
    config = tiny_config(model={"name": "tiny-dense"}, routing_replay="R3")
    loaded = load_model("tiny-dense", cache_dir=cache_dir)
    hub = config.model_copy(update={"model": config.model.model_copy(update={"name": "org/d"})})
    with pytest.raises(RoutingReplayError) as info:
        replay_hooks(loaded.model, hub, is_moe=False)
    assert str(info.value) == dense_replay_message("R3", "org/d")
    # `auto` on a dense model is simply no replay, with its reason.
    trainer = _trainer(tiny_config(model={"name": "tiny-dense"}), cache_dir)
    metrics = trainer.step(ITEMS, parity_reward, seed=1)
    assert metrics["routing/replay_mode"] == 0.0
    assert metrics["routing/replay_reason"] == REASONS.index("dense")


def _granite_moe():
    """An MoE family whose router keel does not hook (GraniteMoe's gate is no *TopKRouter)."""
    cfg = transformers.GraniteMoeConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=300,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg)


def test_an_moe_family_without_hooks_fails_unless_replay_is_off():
    model = _granite_moe()
    assert is_moe_model(model)
    for mode in ("auto", "R2", "R3"):
        with pytest.raises(RoutingReplayError) as info:
            replay_hooks(model, tiny_config(routing_replay=mode), is_moe=True)
        assert str(info.value) == unsupported_moe_message(mode, "tiny-moe", "granitemoe")
    assert replay_hooks(model, tiny_config(routing_replay="none"), is_moe=True) is None


class _RoutesChanged:
    """The real HF engine with its routes removed or cut (what a vLLM engine without
    `enable_return_routed_experts`, or one of another layer count, would return)."""

    def __init__(self, engine: HFEngine, change) -> None:
        self.engine, self.change = engine, change

    def generate(self, *args, **kwargs):
        batch = self.engine.generate(*args, **kwargs)
        return dataclasses.replace(batch, routes=self.change(batch.routes))

    def load_weights(self, model) -> None:
        self.engine.load_weights(model)


@pytest.mark.parametrize("mode", ["auto", "R3"])
def test_missing_engine_routes_fail_the_first_step(cache_dir, mode):
    def no_routes(engine):
        return _RoutesChanged(engine, lambda routes: None)

    trainer = _trainer(tiny_config(routing_replay=mode), cache_dir, wrap=no_routes)
    with pytest.raises(RoutingReplayError) as info:
        trainer.step(ITEMS, parity_reward, seed=1)
    assert str(info.value) == missing_routes_message(mode)
    assert trainer.policy_version == 0  # nothing was updated without replay


def test_r2_needs_no_engine_routes(cache_dir):
    def no_routes(engine):
        return _RoutesChanged(engine, lambda routes: None)

    trainer = _trainer(tiny_config(routing_replay="R2"), cache_dir, wrap=no_routes)
    metrics = trainer.step(ITEMS, parity_reward, seed=1)
    assert trainer.policy_version == 1
    assert "routing/infer_vs_train_any" not in metrics and "routing/old_vs_current_any" in metrics


def test_engine_routes_of_the_wrong_shape_fail_the_first_step(cache_dir):
    def one_layer_short(engine):
        return _RoutesChanged(engine, lambda routes: [r[:, :-1] for r in routes])

    trainer = _trainer(tiny_config(routing_replay="auto"), cache_dir, wrap=one_layer_short)
    with pytest.raises(RoutingReplayError, match=r"engine routes of shape .* L=4, K=2"):
        trainer.step(ITEMS, parity_reward, seed=1)
    assert trainer.policy_version == 0
