"""Checks of a job's model that need more than its config schema: may the job use the model it
names (`keel_server.platform.model_access`, the rule the worker applies too: a built-in, hub id or
allowed path by name, or a checkpoint of the caller's own project by id), and does Routing
Replay make sense for it (only MoE models route, and keel hooks only the routers of some MoE
families; the messages are `keel.types.routing`'s, which the worker raises too)."""

from __future__ import annotations

from keel.types.routing import (
    REPLAY_MOE_MODEL_TYPES,
    dense_replay_message,
    unsupported_moe_message,
)
from keel.types.training import TrainingConfig
from keel_server.db import session_scope
from keel_server.platform.model_access import (
    CheckpointNotFound,
    CheckpointNotUsable,
    ModelNotAllowed,
    resolve_job_model,
)
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import invalid, not_found

_MODEL_LOC = ["body", "config", "model"]
_REPLAY_LOC = ["body", "config", "routing_replay"]


def check_model(ctx: ServiceContext, principal: Principal, config: TrainingConfig) -> None:
    """A 404 for another project's (or no) checkpoint; a 422 for a model the job may not use,
    a checkpoint without weights, R2/R3 on a dense model, or any replay (`auto` measures with
    the hooks) on an MoE family keel cannot hook."""
    model = config.model
    try:
        with session_scope(ctx.sessions) as session:
            source = resolve_job_model(model, ctx.settings, session, principal.project_id)
    except CheckpointNotFound as exc:
        raise not_found("checkpoint", exc.checkpoint_id) from None
    except CheckpointNotUsable as exc:
        raise invalid([*_MODEL_LOC, "checkpoint_id"], str(exc)) from None
    except ModelNotAllowed as exc:
        raise invalid([*_MODEL_LOC, "name"], str(exc)) from None
    replay = config.routing_replay
    if replay in ("R2", "R3") and source.is_moe is False:
        raise invalid(_REPLAY_LOC, dense_replay_message(replay, model.label))
    family = source.model_type
    if replay != "none" and source.is_moe and family not in (None, *REPLAY_MOE_MODEL_TYPES):
        raise invalid(_REPLAY_LOC, unsupported_moe_message(replay, model.label, family))
