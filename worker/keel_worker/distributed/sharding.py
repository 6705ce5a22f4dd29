"""FSDP2 sharding of the policy: `fully_shard` each decoder block, then the root, over the run's
1-D mesh (docs/how-to/distributed.md).

Two things differ from a plain `fully_shard(model)`:

- Gradients are SUMMED over ranks, not averaged (gradient divide factor 1): each rank trains on
  its share of a mini-batch with the mini-batch's global loss normalizer
  (core/aggregation.py), so the sum of the ranks' gradients is the one-process gradient.
- The trainer never calls the model's `forward`: `training.forward.PolicyForward` runs the decoder
  and then the LM head on the trained positions only. FSDP2 all-gathers the root's parameters
  (embeddings, final norm, the tied head) around `forward` alone, so the root gets a forward
  method of its own, `keel_root_call(fn, *args)`, registered with FSDP: it runs `fn(*args)` with
  the root's parameters gathered and hooks the backward of what `fn` returns.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

from keel_worker.distributed.group import DataParallel

ROOT_CALL = "keel_root_call"

RootCall = Callable[..., Any]


def _root_call(_self: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def shard_policy(model: nn.Module, dp: DataParallel) -> RootCall:
    """Shard `model` in place over `dp.mesh` and return its root call (see module docstring).

    Every parameter of a decoder block lives in that block's group; everything else (embeddings,
    norm, head) in the root's, so tied embeddings stay one parameter."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder `layers` to shard")
    for layer in layers:
        fully_shard(layer, mesh=dp.mesh)
    fully_shard(model, mesh=dp.mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            # A plain SUM (gloo has no PREMUL_SUM / AVG; a factor of 1 needs neither).
            module.set_force_sum_reduction_for_comms(True)
    setattr(model, ROOT_CALL, types.MethodType(_root_call, model))
    register_fsdp_forward_method(model, ROOT_CALL)
    return getattr(model, ROOT_CALL)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)
