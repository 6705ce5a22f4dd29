"""The parts of the `vllm` engine that run without vLLM: R3's conversion of vLLM's routed experts
into keel's route layout, and the errors of a worker that lacks vLLM or its options.

vLLM (`enable_return_routed_experts`, GPU only) returns one `[T_prompt + T_resp - 1, L, K]` int
array per completion: the routing of every token fed to the model, the last sampled token never
being fed. The arrays here are recorded routings (the `hf` engine's router hooks on tiny-moe)
cut to that layout, so the conversion is checked on real top-k choices, not on an arange.
`scripts/gpu_check.sh` runs the real thing on a GPU.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.vllm import VLLMEngine, VLLMOptions, VLLMUnavailableError, full_routes


def test_recorded_vllm_routes_convert_to_keels_layout(tiny_moe):
    engine = HFEngine(tiny_moe.model, tiny_moe.tokenizer, precision="fp32")
    prompts = [encode_prompt(tiny_moe.tokenizer, t) for t in ("What is 1 + 2?", "Hi")]
    batch = engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=0)
    for prompt, response, recorded in zip(
        batch.prompt_ids, batch.response_ids, batch.routes, strict=True
    ):
        n_tokens = len(prompt) + len(response)
        assert recorded.shape == (n_tokens, 4, 2)
        as_vllm = recorded[:-1].numpy().astype(np.int32)  # what vLLM hands back
        converted = full_routes(as_vllm, n_tokens)
        assert converted.shape == (n_tokens, 4, 2) and converted.dtype == torch.uint8
        assert torch.equal(converted[:-1], recorded[:-1])
        # The never-fed last token repeats the row before it: the trainer never feeds it either.
        assert torch.equal(converted[-1], converted[-2])


def test_routes_take_a_wider_dtype_past_256_experts():
    routed = np.array([[[0, 300]], [[299, 1]]], dtype=np.int32)  # 2 fed tokens, L=1, K=2
    converted = full_routes(routed, 3)
    assert converted.dtype == torch.int16 and converted.tolist() == [
        [[0, 300]],
        [[299, 1]],
        [[299, 1]],
    ]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm imports here")
def test_a_worker_without_vllm_says_what_to_install(tmp_path):
    options = VLLMOptions(
        kv_cache_gib=None,
        cpu_reserved_cpus=0,
        max_model_len=None,
        gpu_memory_utilization=0.3,
        tensor_parallel_size=1,
    )
    with pytest.raises(VLLMUnavailableError, match=r"pip install 'keel-rl\[vllm\]'"):
        VLLMEngine(tmp_path, options=options)


def test_the_vllm_engine_needs_the_workers_options(tiny_dense, tmp_path):
    from keel.types.training import TrainingConfig
    from keel_worker.training.session import build_engine

    config = TrainingConfig(model={"name": "tiny-dense"}, rollout={"engine": "vllm"})
    with pytest.raises(ValueError, match="vllm_options"):
        build_engine(config, tiny_dense.model, tiny_dense.tokenizer, workdir=tmp_path)
