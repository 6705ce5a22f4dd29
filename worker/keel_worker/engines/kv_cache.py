"""A KV cache that writes into pre-allocated buffers instead of concatenating every step.

transformers' `DynamicLayer` grows by `torch.cat` at every decode step, which copies the whole
cache each token (about 15% of a SmolLM2 decode step on a CPU at batch 64). `make_cache` returns a
`DynamicCache` whose full-attention layers are `BufferedLayer`s sized for prompt + new tokens; any
other layer kind (sliding window, linear attention) keeps the stock implementation.
`cache_kwarg` is the keyword a model's forward takes a cache under (it differs across the
transformers versions keel supports; every forward that passes a cache asks it).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class BufferedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views of `[B, H, capacity, D]` buffers."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads, _, _ = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty(
            (batch, value_states.shape[1], self.capacity, value_states.shape[-1])
        )
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length > 0:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length > 0:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]


def make_cache(config, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `config` with buffered full-attention layers of `capacity` tokens."""
    cache = DynamicCache(config=config)
    cache.layers = [
        BufferedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


def cache_kwarg(model: nn.Module) -> str:
    """The name the model's forward takes its KV cache under: `cache` from transformers 5.2x,
    `past_key_values` before (5.18, the vLLM tier's). Either accepts the other silently (as
    **kwargs) and then decodes every token without its context."""
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters:
        return "cache"
    if "past_key_values" in parameters:
        return "past_key_values"
    raise TypeError(f"{type(model).__name__}.forward takes no KV cache argument")
