"""The policy's weights as a plain transformers model, whether it trains all weights or LoRA.

Owns the one translation from the trainer's model to what engines and checkpoints hold. A
LoRA-trained policy is a `peft.PeftModel` whose adapted linear layers compute
W x + (alpha / rank) · B A x; everything outside keel's trainer (the rollout engines' copies, the
checkpoint's top-level Hugging Face files, vLLM) sees the same function as ONE matrix per layer,
the merged W + ΔW with ΔW = (alpha / rank) · B A (peft's `get_delta_weight`), under the base
model's own parameter names. The trainer's model is never modified: merging in place and
unmerging afterwards would round W by (W + ΔW) − ΔW on every sync, so the base would drift and a
resumed run (which reloads W) would differ from an uninterrupted one.

`policy_tensors` yields the merged tensors lazily, one layer at a time, so a sync holds at most
one merged matrix beside the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

_BASE_LAYER = ".base_layer"


def is_adapter_model(model: nn.Module) -> bool:
    """True for a `peft.PeftModel` (a LoRA run's policy)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a worker dependency
        return False
    return isinstance(model, PeftModel)


@torch.no_grad()
def policy_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy's state dict as a plain model: adapters merged, no LoRA keys.

    Tied weights appear under each of their names, as in `state_dict()`.
    """
    if not is_adapter_model(model):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import Linear as LoraLinear

    base = model.get_base_model()
    adapted = {name: m for name, m in base.named_modules() if isinstance(m, LoraLinear)}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        owner, _, leaf = key.rpartition(".")
        layer = adapted.get(owner.removesuffix(_BASE_LAYER)) if leaf == "weight" else None
        if layer is not None and owner.endswith(_BASE_LAYER):
            (adapter,) = layer.active_adapters
            value = value + layer.get_delta_weight(adapter).to(value.dtype)
        yield key.replace(_BASE_LAYER + ".", "."), value


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the policy as a plain transformers model (adapters merged into it)."""
    duplicate = copy.deepcopy(model)
    return duplicate.merge_and_unload() if is_adapter_model(duplicate) else duplicate


def aliasing_copy(model: nn.Module) -> nn.Module:
    """`plain_copy` without copying the weights of a plain model: its own modules (hooks on them
    reach only the copy) whose parameters are frozen views of `model`'s storage. A LoRA policy's
    is a `plain_copy`: merging writes W + ΔW into the copied weights, which must be its own."""
    if is_adapter_model(model):
        return plain_copy(model)
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def save_policy(model: nn.Module, directory: Path) -> None:
    """Write the policy's merged weights as a Hugging Face directory plain transformers loads."""
    if not is_adapter_model(model):
        model.save_pretrained(directory)
        return
    state = dict(policy_tensors(model))
    model.get_base_model().save_pretrained(directory, state_dict=state)
