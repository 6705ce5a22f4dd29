"""Checks of a job's model that need more than its config schema: is the model name one the
worker can load, and does Routing Replay make sense for it (only MoE models route).

The API never imports the worker, so the built-in names are listed here; a contract test keeps
them equal to `keel_worker.engines.models.BUILTIN_MODELS`. A local directory's MoE-ness is read
from its `config.json` without loading anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from keel_server.services.errors import invalid

# name -> is it a Mixture-of-Experts model
BUILTIN_MODELS: dict[str, bool] = {
    "tiny-dense": False,
    "tiny-moe": True,
    "smollm2-135m-instruct": False,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_MODEL_LOC = ["body", "config", "model", "name"]


def check_model(name: str, routing_replay: str) -> None:
    """Raise a 422 for an unloadable model name or Routing Replay on a dense model."""
    is_moe = _is_moe(name)
    if routing_replay in ("R2", "R3") and is_moe is False:
        raise invalid(
            ["body", "config", "routing_replay"],
            f"Routing Replay {routing_replay} needs a Mixture-of-Experts model; {name!r} is dense "
            "(use routing_replay='none' or 'auto')",
        )


def _is_moe(name: str) -> bool | None:
    """True/False when known; None for a hub id (decided by the worker when it downloads)."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    path = Path(name)
    if path.suffix == ".gguf" and path.is_file():
        return False  # GGUF files keel loads are dense Llama-family models
    if path.is_dir() and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        return any(config.get(key) for key in _MOE_KEYS)
    if _HUB_ID.match(name) and not path.exists():
        return None
    builtin = ", ".join(sorted(BUILTIN_MODELS))
    raise invalid(
        _MODEL_LOC,
        f"unknown model {name!r}: use a built-in model ({builtin}), a local Hugging Face "
        "directory, a .gguf file, or a hub id 'org/name'",
    )
