"""The `vllm` rollout engine: the `RolloutEngine` contract on vLLM, colocated with the trainer.

vLLM is imported lazily (only GPU workers install it). The engine runs in the trainer's process
(`distributed_executor_backend="external_launcher"`, no engine subprocess), so weights are synced
in place after each optimizer step by handing the trainer's tensors to the vLLM model's own
`load_weights`, without a disk round trip.

μ_θold logprobs (paper-spec §1.1) are the sampled tokens' logprobs as the sampler saw them:
`logprobs_mode="processed_logprobs"` applies the temperature exactly as the `hf` engine does
(log softmax(logits / T)); at T = 1 they equal vLLM's raw logprobs. For MoE models the engine asks
for `enable_return_routed_experts`; vLLM returns `[T_prompt + T_resp - 1, L, K]` expert ids (the
last sampled token is never fed), and the missing last row repeats the previous one, as the
trainer never feeds the last token either (see `training.batching`).

LoRA runs sync MERGED weights, not adapters: vLLM starts from the policy written as a plain HF
directory with W + (alpha / rank) · B A in each adapted layer and, after every step, loads the
merged tensors of `engines.merged.policy_tensors` in place, exactly like full fine-tuning. vLLM's
own LoRA serving (`enable_lora`) was not chosen: it adds B A x at serving time through its
own LoRA kernels, which the trainer does not run (one more source of training–inference
mismatch), wants every step's adapter handed over as a new LoRA request, and keeps the adapter
in high precision beside an fp8 base, whereas here (as with the `hf` engine) the merged matrix
is what the rollout precision rounds, as a merged model would be served.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keel_worker.engines.base import Precision, RolloutBatch
from keel_worker.engines.merged import policy_tensors, save_policy
from keel_worker.engines.routing_replay import find_routers, routes_dtype

_DTYPE_OF = {"fp32": "float32", "bf16": "bfloat16", "fp8": "bfloat16"}


class VLLMUnavailableError(RuntimeError):
    """vLLM is not installed or has no GPU to run on."""


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise VLLMUnavailableError(
            "rollout engine 'vllm' needs the vllm package and a CUDA GPU: "
            "pip install 'keel-rl[vllm]'"
        ) from exc
    if not torch.cuda.is_available():
        raise VLLMUnavailableError("rollout engine 'vllm' needs a CUDA GPU")
    return vllm


class VLLMEngine:
    """Rollout engine on an in-process vLLM `LLM` sharing the GPU with the trainer."""

    def __init__(
        self,
        model_dir: Path,
        *,
        precision: Precision = "bf16",
        return_routes: bool = False,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
    ) -> None:
        if precision not in _DTYPE_OF:
            raise ValueError(
                f"rollout precision {precision!r} is an hf-engine emulation; the vllm engine "
                f"serves {', '.join(_DTYPE_OF)}"
            )
        vllm = _import_vllm()
        # A single-process "distributed" group: what external_launcher expects to find.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "dtype": _DTYPE_OF[precision],
            "gpu_memory_utilization": gpu_memory_utilization,
            "distributed_executor_backend": "external_launcher",
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": False,
            "seed": seed,
        }
        if precision == "fp8":
            kwargs["quantization"] = "fp8"  # dynamic per-tensor fp8 weights, requantized on sync
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if return_routes:
            kwargs["enable_return_routed_experts"] = True
        self.precision = precision
        self.return_routes = return_routes
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    @classmethod
    def from_model(
        cls, model: nn.Module, tokenizer: Any, *, precision: Precision, workdir: Path, **kwargs
    ) -> VLLMEngine:
        """Start vLLM from the trainer's current weights (written once as an HF directory)."""
        model_dir = Path(workdir) / "initial_weights"
        model_dir.mkdir(parents=True, exist_ok=True)
        save_policy(model, model_dir)  # a LoRA policy's merged weights
        tokenizer.save_pretrained(model_dir)
        return cls(
            model_dir, precision=precision, return_routes=bool(find_routers(model)), **kwargs
        )

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
    ) -> RolloutBatch:
        params = self._vllm.SamplingParams(
            n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k or -1,
            seed=seed, logprobs=0, detokenize=False,
        )
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        batch = RolloutBatch([], [], [], [], [] if self.return_routes else None, [])
        for p, request in enumerate(outputs):
            for completion in sorted(request.outputs, key=lambda c: c.index):
                self._append(batch, p, prompt_ids[p], completion)
        return batch

    def _append(self, batch: RolloutBatch, p: int, prompt: list[int], completion: Any) -> None:
        tokens = list(completion.token_ids)
        steps = zip(completion.logprobs, tokens, strict=True)
        logprobs = [step[token].logprob for step, token in steps]
        batch.prompt_ids.append(prompt)
        batch.response_ids.append(tokens)
        batch.rollout_logprobs.append(torch.tensor(logprobs, dtype=torch.float32))
        batch.finish_reasons.append("length" if completion.finish_reason == "length" else "stop")
        batch.prompt_index.append(p)
        if batch.routes is not None:
            batch.routes.append(_full_routes(completion.routed_experts, len(prompt) + len(tokens)))

    def load_weights(self, model: nn.Module) -> None:
        """Copy the trainer's weights (a LoRA policy's merged ones) into vLLM's model in place,
        then drop stale KV blocks."""
        target = _runner_model(self.llm)
        target.load_weights(policy_tensors(model))
        if self.precision == "fp8":
            _requantize(target, self.llm)
        self.llm.reset_prefix_cache()


def _full_routes(routed: Any, n_tokens: int) -> torch.Tensor:
    """vLLM's `[n_tokens - 1, L, K]` routes padded to `[n_tokens, L, K]` in a compact dtype."""
    routes = torch.as_tensor(routed)
    num_experts_bound = int(routes.max()) + 1 if routes.numel() else 1
    routes = routes.to(routes_dtype(num_experts_bound))
    missing = n_tokens - routes.shape[0]
    if missing > 0:
        routes = torch.cat([routes, routes[-1:].expand(missing, -1, -1)], dim=0)
    return routes[:n_tokens]


def _runner_model(llm: Any) -> nn.Module:
    """The torch module vLLM runs, reached through the in-process executor."""
    engine = llm.llm_engine
    executor = getattr(engine, "model_executor", None)
    if executor is None:
        executor = engine.engine_core.engine_core.model_executor
    worker = executor.driver_worker
    worker = getattr(worker, "worker", worker)
    return worker.model_runner.model


def _requantize(target: nn.Module, llm: Any) -> None:
    """Let vLLM's fp8 layers quantize the freshly loaded high-precision weights again."""
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    model_config = llm.llm_engine.model_config
    process_weights_after_loading(target, model_config, next(target.parameters()).device)
