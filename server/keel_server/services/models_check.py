"""Checks of a job's model that need more than its config schema: may the job use the model it
names (`keel_server.model_access`, the rule the worker applies too), and does Routing Replay make
sense for it (only MoE models route, and keel hooks only the routers of some MoE families; the
messages are `keel.types.routing`'s, which the worker raises too)."""

from __future__ import annotations

from keel.types.routing import (
    REPLAY_MOE_MODEL_TYPES,
    dense_replay_message,
    unsupported_moe_message,
)
from keel_server.model_access import ModelNotAllowed, resolve_model
from keel_server.services.errors import invalid
from keel_server.settings import Settings

_MODEL_LOC = ["body", "config", "model", "name"]
_REPLAY_LOC = ["body", "config", "routing_replay"]


def check_model(name: str, routing_replay: str, settings: Settings) -> None:
    """Raise a 422 for a model the job may not use, R2/R3 on a dense model, or any replay
    (`auto` measures with the hooks) on an MoE family keel cannot hook."""
    try:
        source = resolve_model(name, settings)
    except ModelNotAllowed as exc:
        raise invalid(_MODEL_LOC, str(exc)) from None
    if routing_replay in ("R2", "R3") and source.is_moe is False:
        raise invalid(_REPLAY_LOC, dense_replay_message(routing_replay, name))
    family = source.model_type
    if routing_replay != "none" and source.is_moe and family not in (None, *REPLAY_MOE_MODEL_TYPES):
        raise invalid(_REPLAY_LOC, unsupported_moe_message(routing_replay, name, family))
