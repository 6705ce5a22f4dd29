"""Checks of a job's model that need more than its config schema: may the job use the model it
names (`keel_server.model_access`, the rule the worker applies too), and does Routing Replay make
sense for it (only MoE models route)."""

from __future__ import annotations

from keel_server.model_access import ModelNotAllowed, resolve_model
from keel_server.services.errors import invalid
from keel_server.settings import Settings

_MODEL_LOC = ["body", "config", "model", "name"]


def check_model(name: str, routing_replay: str, settings: Settings) -> None:
    """Raise a 422 for a model the job may not use, or Routing Replay on a dense model."""
    try:
        source = resolve_model(name, settings)
    except ModelNotAllowed as exc:
        raise invalid(_MODEL_LOC, str(exc)) from None
    if routing_replay in ("R2", "R3") and source.is_moe is False:
        raise invalid(
            ["body", "config", "routing_replay"],
            f"Routing Replay {routing_replay} needs a Mixture-of-Experts model; {name!r} is dense "
            "(use routing_replay='none' or 'auto')",
        )
