"""LoRA runs (`config.lora`): wrap the policy in peft adapters, and carry them through a resume.

Owns how a `keel.types.training.LoraConfig` becomes a `peft.PeftModel`:

- `all-linear` resolves to the last names of the decoder's `nn.Linear` modules (`q_proj`,
  `down_proj`, ...), so the adapters cover attention and the dense or shared-expert MLPs, never
  the LM head or the embeddings. Fused MoE expert tensors (transformers 5 keeps each layer's
  experts in one 3-D parameter) are not `nn.Linear` and stay frozen.
- Routers stay frozen: peft would adapt them (its own `all-linear` does), but a router is the
  discrete choice Routing Replay records and replays, and keeping it a plain module keeps the
  `*TopKRouter` hooks exactly where they are in full fine-tuning. Naming one is an error.
- Every adapted module must be a linear layer peft wraps as `lora.Linear`: that is what
  `engines.merged` merges into the engine's weights and the checkpoint's top-level files.

peft freezes every base weight, so the trainer's optimizer (over `requires_grad` parameters)
holds the adapters alone. `adapter_state` / `load_adapter_state` move exactly those tensors in
and out of the trainer state for an exact resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from keel.types.training import LoraConfig


class LoraTargetError(ValueError):
    """`target_modules` names no module, or one keel does not adapt (routers, the LM head)."""


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap `model` (modified in place) in LoRA adapters; returns the `PeftModel`, in eval mode."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    linear = _decoder_linear_names(model)
    if config.target_modules == "all-linear":
        targets = sorted({name.rpartition(".")[2] for name in linear})
    else:
        targets = list(config.target_modules)
    _refuse_routers(model, targets)
    head = model.get_output_embeddings()
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
    )
    try:
        wrapped = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise LoraTargetError(
            f"LoRA target_modules {targets} do not fit this model ({exc}); its linear modules "
            f"are {', '.join(sorted({n.rpartition('.')[2] for n in linear}))}"
        ) from exc
    _check_adapted(wrapped, head)
    return wrapped.eval()


def _decoder_linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.get_decoder().named_modules() if isinstance(m, nn.Linear)]


def _refuse_routers(model: nn.Module, targets: list[str]) -> None:
    routers = [n for n, m in model.named_modules() if type(m).__name__.lower().endswith("router")]
    for target in targets:
        hit = [n for n in routers if n == target or n.endswith(f".{target}")]
        if hit:
            raise LoraTargetError(
                f"LoRA target {target!r} is an MoE router ({hit[0]}): routers stay frozen in "
                "LoRA runs (Routing Replay records and replays their choices)"
            )


def _check_adapted(wrapped: nn.Module, head: nn.Module | None) -> None:
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in wrapped.get_base_model().named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        base = module.get_base_layer()
        if not isinstance(module, LoraLinear) or not isinstance(base, nn.Linear):
            raise LoraTargetError(
                f"LoRA target {name} is a {type(base).__name__}; keel adapts nn.Linear layers only"
            )
        if base is head:
            raise LoraTargetError(
                f"LoRA target {name} is the LM head; keel adapts the decoder's linear layers"
            )


@contextmanager
def adapter_dropout(model: nn.Module) -> Iterator[None]:
    """LoRA dropout active inside the block (the gradient forwards), the rest in eval mode."""
    modules = [
        m for n, m in model.named_modules() if isinstance(m, nn.Dropout) and ".lora_dropout." in n
    ]
    for module in modules:
        module.train()
    try:
        yield
    finally:
        for module in modules:
            module.eval()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors (the adapters' A and B), on the CPU, by parameter name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put `adapter_state`'s tensors back; the adapter layout must be the same."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise ValueError(
            "the checkpoint's adapters do not match this run's LoRA config "
            f"({len(state)} tensors saved, {len(trainable)} expected)"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
