"""The `hf` rollout engine: batched sampling with a KV cache on a transformers model (CPU path).

Owns `HFEngine`. A hand-written decode loop replaces `generate` because on a CPU the per-token
overhead of `generate` (logits processors, stopping criteria, cache bookkeeping) dominates; the
loop also shares each prompt's prefill among its n samples and drops finished rows from the batch.

μ_θold logprobs (docs/concepts/algorithm.md §1.1, the denominator of the IS weight) follow
`engines.sampling`: log softmax(logits / T)[token] of the raw logits the sampler used. Prompts are
left padded and position ids come from the attention mask, so padding never shifts a token's
position and the fp32 engine reproduces the trainer's logprobs to ~1e-6.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from keel_worker.engines.base import Precision, RolloutBatch
from keel_worker.engines.kv_cache import cache_kwarg, make_cache
from keel_worker.engines.precision import copy_weights, make_engine_copy
from keel_worker.engines.routes import RouteCollector
from keel_worker.engines.routing_replay import RoutingReplay, find_routers
from keel_worker.engines.sampling import sample_tokens

_COMPACT_FRACTION = 8  # drop finished rows once they are 1/8 of the running batch


@dataclass
class _Rows:
    """The running batch: the response index of each row and its decoding state."""

    response_R: torch.Tensor
    sampling_R: torch.Tensor  # bool: the row still samples tokens
    positions_R: torch.Tensor  # position id of the next token fed
    attention_R_S: torch.Tensor

    def select(self, keep_R: torch.Tensor) -> _Rows:
        return _Rows(
            self.response_R[keep_R],
            self.sampling_R[keep_R],
            self.positions_R[keep_R],
            self.attention_R_S[keep_R],
        )


class HFEngine:
    """Rollout engine on a copy of a transformers causal LM at an inference precision.

    The copy's modules are always its own; its fp32 weights may be the trainer's own tensors
    (`share_weights`), which spares a second copy of every weight: the trainer's in-place
    optimizer steps reach the engine as they happen, and `load_weights` of another model (Tinker's
    saved sampler weights) gives the engine a private copy instead of writing into the trainer's.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        precision: Precision = "fp32",
        bf16_native: bool | None = None,
        share_weights: bool = False,
    ) -> None:
        """`bf16_native`: compute bf16/fp8 in native bfloat16 or emulate it in float32 (None:
        as the CPU measures, `engines.precision.engine_bf16_native`). `share_weights`: alias
        `model`'s weights where that is exact (an fp32 engine on `model`'s device; a LoRA
        policy's merged layers stay the engine's own); the caller asks only where `model` is not
        sharded and trains on the engine's device, and an engine of another precision keeps its
        own copy."""
        self.precision = precision
        self.tokenizer = tokenizer
        # The model whose storage the engine's parameters may alias: the trainer's.
        self.shares_with = model if share_weights and precision == "fp32" else None
        self.model = make_engine_copy(
            model, precision, bf16_native=bf16_native, share=self.shares_with is not None
        )
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.replay = RoutingReplay(self.model) if find_routers(self.model) else None
        self.cache_kwarg = cache_kwarg(self.model)

    def load_weights(self, model: nn.Module) -> None:
        """Sync the engine from the trainer's weights (after each optimizer step), or load
        another model's. Sharing the trainer's storage, a sync only re-aliases what no longer
        is (a tensor the trainer replaced, or after another model's load), and another model's
        weights become the engine's private copy: the trainer's tensors are never written."""
        if self.shares_with is None:
            write = "in_place"
        else:
            write = "alias" if model is self.shares_with else "private"
        copy_weights(self.model, model, self.precision, write=write)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop_ids: Collection[int] | None = None,
    ) -> RolloutBatch:
        """Sample `n` responses per prompt; the responses of one prompt are adjacent. A response
        stops at the first of `stop_ids` (None: the model's EOS ids; empty: never before
        `max_new_tokens`), which it includes."""
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("generate needs at least one non-empty prompt")
        if n < 1 or max_new_tokens < 1:
            raise ValueError("n and max_new_tokens must be at least 1")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        sampler = (temperature, top_p, generator, top_k)
        stops = self.eos_ids if stop_ids is None else set(stop_ids)
        if self.replay is None:
            return self._generate(
                prompt_ids, n, max_new_tokens, sampler, stops, RouteCollector(None)
            )
        with self.replay.record() as recording:
            collector = RouteCollector(recording, prompt_ids, n, max_new_tokens)
            return self._generate(prompt_ids, n, max_new_tokens, sampler, stops, collector)

    def _generate(self, prompt_ids, n, max_new_tokens, sampler, stops, routes: RouteCollector):
        num_responses = len(prompt_ids) * n
        tokens_B_T = torch.full((num_responses, max_new_tokens), self.pad_id, dtype=torch.long)
        logprobs_B_T = torch.zeros(num_responses, max_new_tokens)
        lengths_B = torch.zeros(num_responses, dtype=torch.long)
        stopped_B = torch.zeros(num_responses, dtype=torch.bool)
        eos_ids = torch.tensor(sorted(stops), dtype=torch.long)

        cache, logits_R_V, rows = self._prefill(prompt_ids, n, max_new_tokens)
        routes.take_prefill()
        for step in range(max_new_tokens):
            sampling_R = rows.sampling_R
            tokens_R, logprobs_R = sample_tokens(logits_R_V, *sampler)
            active_R = rows.response_R[sampling_R]
            tokens_B_T[active_R, step] = tokens_R[sampling_R]
            logprobs_B_T[active_R, step] = logprobs_R[sampling_R]
            lengths_B[active_R] = step + 1
            eos_R = torch.isin(tokens_R, eos_ids) & sampling_R
            stopped_B[rows.response_R[eos_R]] = True
            rows.sampling_R = sampling_R & ~eos_R & (step + 1 < max_new_tokens)
            # MoE: every sampled token is fed once more so its routes are recorded too.
            feeding_R = sampling_R if routes.active else rows.sampling_R
            if not feeding_R.any():
                break
            cache, rows, feeding_R = self._compact(cache, rows, feeding_R)
            logits_R_V = self._decode(tokens_B_T[rows.response_R, step], cache, rows)
            routes.take_step(rows.response_R, feeding_R, step)
        return _to_batch(prompt_ids, n, tokens_B_T, logprobs_B_T, lengths_B, stopped_B, routes)

    def _prefill(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int):
        """One forward over the left-padded prompts, then its cache repeated for the n samples."""
        width = max(len(p) for p in prompt_ids)
        input_P_S = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        attention_P_S = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, prompt in enumerate(prompt_ids):
            input_P_S[i, width - len(prompt) :] = torch.tensor(prompt)
            attention_P_S[i, width - len(prompt) :] = 1
        positions_P_S = (attention_P_S.cumsum(-1) - 1).clamp(min=0)
        cache = make_cache(self.model.config, capacity=width + max_new_tokens)
        out = self.model(
            input_ids=input_P_S,
            attention_mask=attention_P_S,
            position_ids=positions_P_S,
            **{self.cache_kwarg: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(n)
        response_R = torch.arange(len(prompt_ids) * n)
        rows = _Rows(
            response_R=response_R,
            sampling_R=torch.ones_like(response_R, dtype=torch.bool),
            positions_R=positions_P_S[:, -1].repeat_interleave(n) + 1,
            attention_R_S=attention_P_S.repeat_interleave(n, dim=0),
        )
        return cache, out.logits[:, -1].float().repeat_interleave(n, dim=0), rows

    def _decode(self, feed_R: torch.Tensor, cache: DynamicCache, rows: _Rows) -> torch.Tensor:
        ones_R_1 = torch.ones((feed_R.shape[0], 1), dtype=rows.attention_R_S.dtype)
        rows.attention_R_S = torch.cat([rows.attention_R_S, ones_R_1], dim=1)
        out = self.model(
            input_ids=feed_R[:, None],
            attention_mask=rows.attention_R_S,
            position_ids=rows.positions_R[:, None],
            **{self.cache_kwarg: cache},
            use_cache=True,
        )
        rows.positions_R = rows.positions_R + 1
        return out.logits[:, -1].float()

    @staticmethod
    def _compact(cache: DynamicCache, rows: _Rows, feeding_R: torch.Tensor):
        """Drop rows with nothing left to feed once enough of them accumulate."""
        done = int((~feeding_R).sum())
        if done == 0 or done * _COMPACT_FRACTION < feeding_R.shape[0]:
            return cache, rows, feeding_R
        keep_R = feeding_R.nonzero().squeeze(-1)
        cache.batch_select_indices(keep_R)
        return cache, rows.select(keep_R), feeding_R[keep_R]


def _eos_ids(model: nn.Module, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    if not ids:
        raise ValueError("the tokenizer and generation config define no EOS token")
    return ids


def _to_batch(prompt_ids, n, tokens_B_T, logprobs_B_T, lengths_B, stopped_B, routes):
    prompt_index = [i // n for i in range(tokens_B_T.shape[0])]
    lengths = lengths_B.tolist()
    return RolloutBatch(
        prompt_ids=[prompt_ids[p] for p in prompt_index],
        response_ids=[tokens_B_T[i, :length].tolist() for i, length in enumerate(lengths)],
        rollout_logprobs=[logprobs_B_T[i, :length].clone() for i, length in enumerate(lengths)],
        finish_reasons=["stop" if stopped else "length" for stopped in stopped_B.tolist()],
        routes=routes.per_response(lengths) if routes.active else None,
        prompt_index=prompt_index,
    )
