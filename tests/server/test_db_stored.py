"""The job row's JSON columns come back as their wire models (`keel_server.db.stored`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from keel.types.jobs import ExternalReward, GuardSummary, WebhookReward
from keel_server.db import stored


def _row(**columns):
    base = {
        "config": {},
        "reward_source": {"type": "builtin"},
        "prompt_source": {"type": "task"},
        "guard": None,
    }
    return SimpleNamespace(**{**base, **columns})


def test_the_stored_reward_source_is_its_wire_model_with_its_bounds():
    row = _row(reward_source={"type": "external", "deadline_s": 30.0, "min_value": -1.0})
    source = stored.reward_source(row)
    assert isinstance(source, ExternalReward)
    assert (source.deadline_s, source.min_value, source.max_value) == (30.0, -1.0, None)


def test_a_stored_webhook_source_has_no_secret_and_still_parses():
    row = _row(reward_source={"type": "webhook", "url": "https://rewards.example/score"})
    source = stored.reward_source(row)
    assert isinstance(source, WebhookReward) and source.secret is None


def test_a_stored_value_that_no_longer_validates_is_an_error_not_a_default():
    with pytest.raises(ValidationError):
        stored.reward_source(_row(reward_source={"type": "builtin", "verifier": "nope"}))
    with pytest.raises(ValidationError):
        stored.prompt_type(_row(prompt_source={"type": "carrier-pigeon"}))


def test_the_prompt_type_and_an_untouched_guard_summary():
    row = _row(prompt_source={"type": "client"})
    assert stored.prompt_type(row) == "client"
    assert stored.guard_summary(row) == GuardSummary()
    row = _row(guard={"triggers": 2, "rollbacks": 1, "lr_scale": 0.5})
    assert stored.guard_summary(row).model_dump(include={"triggers", "rollbacks", "lr_scale"}) == {
        "triggers": 2,
        "rollbacks": 1,
        "lr_scale": 0.5,
    }
