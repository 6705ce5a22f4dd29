"""`ResidentModel`: one policy that stays loaded and executes Tinker's primitives in order.

It reuses keel's pieces rather than re-deriving them: the training forward
(`training.forward.PolicyForward`, log π of the targets through the LM head at the scored
positions only), the objectives (`core.objectives` through `tinker.objectives`), LoRA
(`training.lora`), the HF rollout engine and its sampler (`engines.hf`, `engines.sampling`), and
the merged-weights export (`engines.merged`).

- `forward(..., backward=True)` accumulates `.grad` across calls until `optim_step`: every loss is
  a sum with a constant divisor, so chunks of one batch give exactly the one call's gradient.
  The whole batch is checked before any forward, so a bad datum changes no state.
- `optim_step` is AdamW with the request's hyperparameters set on the parameter groups (its
  moments persist across calls), the global gradient norm clipped when `grad_clip_norm` > 0; a
  non-finite gradient skips the update (as keel's step does) and zeroes the gradients either way.
- `sample` draws from the engine, which holds the policy's own fp32 tensors (updated in place
  by `optim_step`), re-synced after a load; inside `weights_from` it holds a private copy of the
  saved weights, so the policy's tensors are never overwritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from keel.types import metric_names as metric
from keel.types.training import LoraConfig
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.merged import is_adapter_model, save_policy
from keel_worker.engines.models import LoadedModel
from keel_worker.tinker.batch import (
    AdamParams,
    Datum,
    ForwardResult,
    SampledSequence,
    SampleResult,
    SamplingParams,
)
from keel_worker.tinker.losses import TARGET_TOKENS, TinkerLoss
from keel_worker.tinker.microbatch import datum_micro_batch, padded_inputs
from keel_worker.tinker.registry import resolve_loss
from keel_worker.tinker.stops import apply_stop_strings
from keel_worker.training.forward import PolicyForward
from keel_worker.training.lora import adapter_state, apply_lora, load_adapter_state
from keel_worker.training.metrics import MetricSink

WEIGHTS_FILE = "weights.pt"
OPTIMIZER_FILE = "optimizer.pt"
DEFAULT_MICRO_BATCH_SIZE = 8


class ResidentModel:
    """A policy, its AdamW state and a rollout engine; `version` counts the updates applied."""

    def __init__(
        self, loaded: LoadedModel, *, lora_rank: int | None, micro_batch_size: int
    ) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.lora_rank = lora_rank
        self.micro_batch_size = micro_batch_size
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        # Full fine-tuning trains every weight; a LoRA policy only its adapters (peft froze W).
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._fresh_optimizer()
        # Tinker's logprobs are under softmax(logits): temperature 1, fp32, no routing replay.
        self.policy_forward = PolicyForward(self.model, temperature=1.0, bf16=False, replay=None)
        # The engine's weights are the policy's own tensors (one copy in memory): `optim_step`
        # updates both, and `weights_from` gives the engine a private copy of the saved ones.
        self.engine = HFEngine(self.model, self.tokenizer, precision="fp32", share_weights=True)
        self.engine_stale = False
        self.version = 0

    @classmethod
    def create(
        cls,
        loaded: LoadedModel,
        *,
        lora_rank: int | None,
        seed: int,
        micro_batch_size: int = DEFAULT_MICRO_BATCH_SIZE,
    ) -> ResidentModel:
        """Wrap `loaded` (modified in place): `lora_rank` None trains every weight, else keel's
        LoRA of that rank (its other settings at `LoraConfig`'s defaults), the adapters
        initialized from `seed`."""
        if lora_rank is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = apply_lora(loaded.model, LoraConfig(rank=lora_rank))
            loaded = LoadedModel(model, loaded.tokenizer, loaded.name, loaded.is_moe)
        return cls(loaded, lora_rank=lora_rank, micro_batch_size=micro_batch_size)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: dict | None,
        *,
        backward: bool,
    ) -> ForwardResult:
        """The loss on `data`; with `backward` its gradient is added to the parameters' `.grad`.
        ValueError (before anything runs) for an unknown loss, a bad config or a bad datum."""
        loss = resolve_loss(loss_fn, loss_fn_config)
        if not data:
            raise ValueError("forward needs at least one datum")
        for index, datum in enumerate(data):
            loss.check(index, datum, self.vocab_size)
            if set(datum.inputs) != set(data[0].inputs):
                raise ValueError(
                    f"datum {index}: loss_fn_inputs {sorted(datum.inputs)} differ from datum 0's "
                    f"{sorted(data[0].inputs)}; every datum of a call carries the same inputs"
                )
        outputs: list[dict[str, np.ndarray]] = [{} for _ in data]
        sink, total = MetricSink(), torch.zeros(())
        order = sorted(range(len(data)), key=lambda i: -len(data[i].tokens))
        for start in range(0, len(order), self.micro_batch_size):
            rows = order[start : start + self.micro_batch_size]
            with torch.set_grad_enabled(backward):
                total += self._micro_batch(data, rows, loss, outputs, sink, backward=backward)
        metrics = _tinker_metrics(sink.finish())
        metrics["loss:sum"] = float(total)
        return ForwardResult(outputs=outputs, metrics=metrics)

    def _micro_batch(self, data, rows, loss: TinkerLoss, outputs, sink, *, backward: bool):
        mb = datum_micro_batch(data, rows, pad_id=self.pad_id)
        out = self.policy_forward(mb)
        device = out.logprobs_B_T.device
        mask_B_T = mb.mask_B_T.to(device)
        inputs = padded_inputs(data, rows, mb.mask_B_T.shape[1], skip=TARGET_TOKENS)
        terms = loss.terms(out.logprobs_B_T, mask_B_T, {k: v.to(device) for k, v in inputs.items()})
        if backward:
            terms.loss.backward()
        sink.add_weighted(terms.metrics, weight=torch.as_tensor(terms.tokens))
        logprobs_B_T = out.logprobs_B_T.detach().cpu().numpy()
        elementwise_B_T = None
        if terms.elementwise_B_T is not None:
            elementwise_B_T = terms.elementwise_B_T.detach().cpu().numpy()
        for i, row in enumerate(rows):
            n = len(data[row].tokens)
            outputs[row]["logprobs"] = logprobs_B_T[i, :n].astype(np.float32)
            if elementwise_B_T is not None:
                outputs[row]["elementwise_loss"] = elementwise_B_T[i, :n].astype(np.float32)
        return terms.loss.detach().cpu()

    def optim_step(self, params: AdamParams) -> dict[str, float]:
        """One AdamW step on the accumulated gradients, which are then zeroed."""
        _check_adam(params)
        for group in self.optimizer.param_groups:
            group.update(
                lr=params.learning_rate,
                betas=(params.beta1, params.beta2),
                eps=params.eps,
                weight_decay=params.weight_decay,
            )
        clip = params.grad_clip_norm if params.grad_clip_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        # A non-finite gradient never reaches AdamW (it would poison its moments for good).
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.version += 1
            self.engine_stale = True
        self.optimizer.zero_grad(set_to_none=True)
        return {
            metric.OPTIM_GRAD_NORM: float(grad_norm),
            metric.OPTIM_LR: params.learning_rate,
            metric.GUARD_SKIPPED_UPDATES: 0.0 if finite else 1.0,
            metric.POLICY_VERSION: float(self.version),
        }

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        prompt: list[int],
        params: SamplingParams,
        num_samples: int,
        *,
        prompt_logprobs: bool = False,
    ) -> SampleResult:
        """`num_samples` completions of `prompt` from the current weights (the engine's log μ
        with each token); `prompt_logprobs` adds log π of every prompt token after the first."""
        self._check_sample(prompt, params, num_samples)
        if self.engine_stale:
            self.engine.load_weights(self.model)
            self.engine_stale = False
        strings = [s for s in params.stop or [] if isinstance(s, str)]
        stop_ids = None
        if params.stop is not None and not strings:
            stop_ids = [int(s) for s in params.stop]  # [] included: no stop at all
        batch = self.engine.generate(
            [prompt],
            n=num_samples,
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=max(params.top_k, 0),  # Tinker's -1 and keel's 0 both mean no limit
            seed=params.seed,
            stop_ids=stop_ids,
        )
        sequences = [
            SampledSequence(tokens, logprobs.tolist(), reason)
            for tokens, logprobs, reason in zip(
                batch.response_ids, batch.rollout_logprobs, batch.finish_reasons, strict=True
            )
        ]
        if strings:
            sequences = [apply_stop_strings(s, strings, self.tokenizer) for s in sequences]
        scored = self._prompt_logprobs(prompt) if prompt_logprobs else None
        return SampleResult(sequences=sequences, prompt_logprobs=scored)

    @torch.no_grad()
    def _prompt_logprobs(self, prompt: list[int]) -> list[float | None]:
        if len(prompt) == 1:
            return [None]
        datum = Datum(prompt[:-1], {TARGET_TOKENS: np.asarray(prompt[1:], dtype=np.int64)})
        out = self.policy_forward(datum_micro_batch([datum], [0], pad_id=self.pad_id))
        return [None, *out.logprobs_B_T[0, : len(prompt) - 1].cpu().tolist()]

    def _check_sample(self, prompt: list[int], params: SamplingParams, num_samples: int) -> None:
        if not prompt or any(not 0 <= t < self.vocab_size for t in prompt):
            raise ValueError(f"the prompt must be non-empty token ids in [0, {self.vocab_size})")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if params.max_tokens is None or params.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {params.max_tokens}")
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.top_k < -1:
            raise ValueError(
                "need temperature >= 0, 0 < top_p <= 1 and top_k >= -1; got "
                f"{params.temperature}, {params.top_p}, {params.top_k}"
            )
        stops = params.stop or []
        if len({isinstance(s, str) for s in stops}) > 1:
            raise ValueError("stop must be all strings or all token ids")

    # ------------------------------------------------------------------ state
    def save(self, directory: Path, *, optimizer: bool) -> None:
        """The trained weights (a LoRA policy's adapters, else every weight) and the version;
        with `optimizer`, AdamW's state too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = adapter_state(self.model) if self.lora_rank else self.model.state_dict()
        torch.save(
            {"version": self.version, "lora_rank": self.lora_rank, "weights": weights},
            directory / WEIGHTS_FILE,
        )
        if optimizer:
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load(self, directory: Path, *, optimizer: bool) -> None:
        """Put back what `save` wrote; without `optimizer` AdamW starts afresh. Pending
        gradients are dropped."""
        directory = Path(directory)
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if state["lora_rank"] != self.lora_rank:
            raise ValueError(
                f"saved with lora_rank {state['lora_rank']}, this model has {self.lora_rank}"
            )
        if optimizer and not (directory / OPTIMIZER_FILE).is_file():
            raise ValueError(f"{directory} holds no optimizer state")
        if self.lora_rank:
            load_adapter_state(self.model, state["weights"])
        else:
            self.model.load_state_dict(state["weights"])
        self.optimizer = self._fresh_optimizer()
        if optimizer:
            saved = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.version = int(state["version"])
        self.engine_stale = True

    def save_for_sampler(self, directory: Path) -> None:
        """The policy as a plain Hugging Face directory (a LoRA policy's adapters merged) with
        its tokenizer: what a sampler or `transformers` loads."""
        directory = Path(directory)
        save_policy(self.model, directory)
        base = self.model.get_base_model() if is_adapter_model(self.model) else self.model
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @contextmanager
    def weights_from(self, directory: Path) -> Iterator[None]:
        """Sample from a `save_for_sampler` directory: the engine holds a private copy of its
        weights inside the block (the policy's tensors it otherwise shares stay untouched) and
        takes the live ones back at the next sample."""
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(Path(directory), dtype=torch.float32)
        self.engine.load_weights(saved)
        del saved
        self.engine_stale = False  # `sample` must not sync the live weights over these
        try:
            yield
        finally:
            self.engine_stale = True

    def _fresh_optimizer(self) -> torch.optim.AdamW:
        defaults = AdamParams()
        return torch.optim.AdamW(
            self.params,
            lr=defaults.learning_rate,
            betas=(defaults.beta1, defaults.beta2),
            eps=defaults.eps,
            weight_decay=defaults.weight_decay,
        )


def _check_adam(params: AdamParams) -> None:
    if not (
        params.learning_rate >= 0
        and 0 <= params.beta1 < 1
        and 0 <= params.beta2 < 1
        and params.eps > 0
        and params.weight_decay >= 0
        and params.grad_clip_norm >= 0
    ):
        raise ValueError(f"invalid Adam parameters: {params}")


def _tinker_metrics(values: dict[str, float]) -> dict[str, float]:
    """keel's metric names with the reduction suffix the SDK merges chunks by: `_max` and
    `_min` names are extremes, every other one a token-weighted mean within the call (the SDK
    averages those across chunks weighted by their data count). A non-finite value (a Pearson
    correlation over constant probabilities) is missing, so it is left out, not sent as NaN."""
    out = {}
    for name, value in values.items():
        if name == metric.TIME_STEP or not np.isfinite(value):
            continue
        suffix = name[-3:] if name.endswith(("_max", "_min")) else "mean"
        out[f"{name}:{suffix}"] = value
    return out
