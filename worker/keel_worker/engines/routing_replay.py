"""Routing Replay mechanics: record and replay the routed experts of MoE models
(docs/concepts/algorithm.md §2.4).

Owns the forward hooks on the `*TopKRouter` modules of the transformers MoE families. Every one of
these routers returns `(router_logits, router_scores, router_indices)` from `forward`:

- `record()` stores `router_indices` of every MoE layer for every forward call (prefill and each
  decode step of `generate` alike) as a compact integer tensor `[B, S, L, K]`;
- `replay(routes_B_S_L_K)` swaps only the discrete top-k choice (R2 replays the π_old training
  forward's routes, R3 the inference engine's, Eq. 6 of the paper). The gate weights are
  recomputed from the live router logits with the family's own normalization,
      g_i = I_ref,i · softmax(s)_i / Σ_j I_ref,j · softmax(s)_j   (normalized families),
  so the router still receives gradients; with unchanged weights and the natural routes the
  replayed forward is bit-identical to the plain one.

`copy.deepcopy` copies forward hooks, so hooks live only inside the context managers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

# The families whose router returns (logits, scores, indices) with softmax → top-k (→ renorm).
SUPPORTED_ROUTER_CLASSES = (
    "Qwen3MoeTopKRouter",
    "Qwen2MoeTopKRouter",
    "MixtralTopKRouter",
    "OlmoeTopKRouter",
    "Qwen3NextTopKRouter",
    "Qwen3_5MoeTopKRouter",
)
# These renormalize the top-k probabilities unconditionally (no `norm_topk_prob` switch).
_ALWAYS_NORMALIZED = frozenset({"MixtralTopKRouter", "Qwen3_5MoeTopKRouter"})


class RoutingReplayError(ValueError):
    """Routing Replay cannot run on this model or with these routes."""


def find_routers(model: nn.Module) -> list[nn.Module]:
    """The supported router modules of `model`, in layer order (module registration order)."""
    return [m for m in model.modules() if type(m).__name__ in SUPPORTED_ROUTER_CLASSES]


def routes_dtype(num_experts: int) -> torch.dtype:
    """Compact storage for expert ids: uint8 up to 256 experts, int16 above (up to 32,768)."""
    return torch.uint8 if num_experts <= 256 else torch.int16


@dataclass
class RouteRecording:
    """Routes captured by `RoutingReplay.record()`, one `[B, S_call, L, K]` tensor per forward."""

    calls: list[torch.Tensor] = field(default_factory=list)

    @property
    def routes_B_S_L_K(self) -> torch.Tensor:
        """All calls concatenated along time (prefill then each decode step for `generate`)."""
        if not self.calls:
            raise RoutingReplayError("no forward pass ran inside record()")
        return torch.cat(self.calls, dim=1)


class RoutingReplay:
    """Record/replay hooks for one MoE model. `RoutingReplay(dense_model)` raises."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.routers = find_routers(model)
        if not self.routers:
            raise RoutingReplayError(_no_router_message(model))
        self.layer_of = {id(router): layer for layer, router in enumerate(self.routers)}
        self.num_layers = len(self.routers)
        self.top_k = self.routers[0].top_k
        self.num_experts = self.routers[0].num_experts
        self.dtype = routes_dtype(self.num_experts)

    @contextmanager
    def record(self) -> Iterator[RouteRecording]:
        """Record the natural routes of every forward of `self.model` run inside the block."""
        recording = RouteRecording()
        pending: list[torch.Tensor | None] = [None] * self.num_layers
        shape: list[tuple[int, int]] = []

        def on_router(module: nn.Module, _inputs: tuple, output: tuple) -> None:
            pending[self.layer_of[id(module)]] = output[2].detach()

        def on_model_end(*_args: object) -> None:
            batch, time = shape.pop()
            layers = [_to_B_S_K(idx, batch, time) for idx in pending]
            recording.calls.append(torch.stack(layers, dim=2).to("cpu", self.dtype))

        handles = [r.register_forward_hook(on_router) for r in self.routers]
        handles.append(self.model.register_forward_pre_hook(_shape_hook(shape), with_kwargs=True))
        handles.append(self.model.register_forward_hook(on_model_end))
        try:
            yield recording
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def replay(self, routes_B_S_L_K: torch.Tensor) -> Iterator[RouteRecording]:
        """Replay `routes_B_S_L_K` (the layout `record()` produces) in every forward in the block.

        Yields a recording of the routes the router would have chosen naturally (its own top-k on
        the live logits), so callers can measure routing disagreement without a second forward.
        """
        self._check_routes(routes_B_S_L_K)
        natural = RouteRecording()
        natural_layers: list[torch.Tensor | None] = [None] * self.num_layers
        batch, time = routes_B_S_L_K.shape[:2]

        def on_router(module: nn.Module, _inputs: tuple, output: tuple) -> tuple:
            layer = self.layer_of[id(module)]
            logits, scores, natural_idx = output
            natural_layers[layer] = natural_idx.detach()
            idx = routes_B_S_L_K[:, :, layer, :].reshape(-1, self.top_k)
            if idx.shape[0] != logits.shape[0]:
                raise RoutingReplayError(
                    f"replay routes cover {idx.shape[0]} tokens ({batch}×{time}) but the forward "
                    f"routes {logits.shape[0]}; pass routes laid out like the input ids"
                )
            idx = idx.to(device=logits.device, dtype=natural_idx.dtype)
            return logits, _replayed_gates(module, logits, idx, scores.dtype), idx

        def on_model_end(*_args: object) -> None:
            layers = [_to_B_S_K(idx, batch, time) for idx in natural_layers]
            natural.calls.append(torch.stack(layers, dim=2).to("cpu", self.dtype))

        handles = [r.register_forward_hook(on_router) for r in self.routers]
        handles.append(self.model.register_forward_hook(on_model_end))
        try:
            yield natural
        finally:
            for handle in handles:
                handle.remove()

    def check_rollout_routes(self, routes_T_L_K: list[torch.Tensor], lengths: list[int]) -> None:
        """Raise unless there is one `[≥ n_i, L, K]` route tensor per response, `n_i` being the
        tokens the engine fed for it (`lengths`), with this model's L and K."""
        if len(routes_T_L_K) != len(lengths):
            raise RoutingReplayError(
                f"the engine returned routes for {len(routes_T_L_K)} of {len(lengths)} responses"
            )
        expected = (self.num_layers, self.top_k)
        for i, (r, n) in enumerate(zip(routes_T_L_K, lengths, strict=True)):
            if r.dim() != 3 or tuple(r.shape[1:]) != expected or r.shape[0] < n:
                raise RoutingReplayError(
                    f"response {i}: engine routes of shape {tuple(r.shape)}, the model needs "
                    f"[≥{n}, L={expected[0]}, K={expected[1]}]"
                )

    def _check_routes(self, routes_B_S_L_K: torch.Tensor) -> None:
        expected = (self.num_layers, self.top_k)
        if routes_B_S_L_K.dim() != 4 or tuple(routes_B_S_L_K.shape[2:]) != expected:
            raise RoutingReplayError(
                f"routes must be [B, S, L={expected[0]}, K={expected[1]}], "
                f"got {tuple(routes_B_S_L_K.shape)}"
            )
        if routes_B_S_L_K.numel() and int(routes_B_S_L_K.max()) >= self.num_experts:
            raise RoutingReplayError(f"expert id out of range (model has {self.num_experts})")


def _replayed_gates(
    router: nn.Module, logits: torch.Tensor, idx: torch.Tensor, scores_dtype: torch.dtype
) -> torch.Tensor:
    """The family's gate weights for the replayed experts, from the live (differentiable) logits.

    Mirrors the routers' own arithmetic (float32 softmax, gather instead of top-k, in-place style
    renormalization) so that replaying the natural routes reproduces their scores bit for bit.
    """
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    gates = probs.gather(-1, idx)
    normalize = type(router).__name__ in _ALWAYS_NORMALIZED or getattr(
        router, "norm_topk_prob", False
    )
    if normalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return gates.to(scores_dtype)


def _to_B_S_K(idx_N_K: torch.Tensor | None, batch: int, time: int) -> torch.Tensor:
    if idx_N_K is None:
        raise RoutingReplayError("an MoE layer did not run during the forward")
    return idx_N_K.reshape(batch, time, -1)


def _shape_hook(shape: list[tuple[int, int]]):
    """Forward pre-hook remembering the (batch, time) of each model call."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = kwargs.get("input_ids")
        if tokens is None and args:
            tokens = args[0]
        if tokens is None:
            tokens = kwargs["inputs_embeds"]
        shape.append((tokens.shape[0], tokens.shape[1]))

    return hook


def _no_router_message(model: nn.Module) -> str:
    name = type(model).__name__
    config = getattr(model, "config", None)
    expert_attrs = ("num_experts", "num_local_experts", "n_routed_experts")
    is_moe = any(getattr(config, attr, None) for attr in expert_attrs)
    if is_moe:
        return (
            f"{name} is a Mixture-of-Experts model whose router is not supported by Routing "
            f"Replay; supported routers: {', '.join(SUPPORTED_ROUTER_CLASSES)}"
        )
    return f"Routing Replay needs a Mixture-of-Experts model; {name} is dense (no router modules)"
