"""Built-in tiny models, built from configs in code (no download), for tests and the harness.

Owns `TINY_BUILDERS` (name → builder) and one config factory per supported MoE family
(`tiny_moe_config(family)`), so Routing Replay can be tested on every family it claims. Router
weights of the transformers MoE families start at zero (every expert ties), so each builder
re-initializes them from normal(0, 0.1); all weights come from a fixed seed so two builds are equal.
The hybrid families (Qwen3-Next, Qwen3.5-MoE) use full attention in every layer here: their
linear-attention kernels fall back to slow reference code on a CPU, and routing does not depend on
the attention type.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel

from keel_worker.engines.tokenizer import build_byte_tokenizer

TINY_VOCAB_SIZE = 320  # 259 byte-level tokens rounded up; the extra rows are never sampled much
ROUTER_INIT_STD = 0.1
_INIT_SEED = 1234

_COMMON = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _family_configs() -> dict[str, Callable[[], transformers.PretrainedConfig]]:
    """Config factories of the MoE families the installed transformers provides."""
    moe = {"num_experts_per_tok": 2, "moe_intermediate_size": 128}
    factories: dict[str, Callable[[], transformers.PretrainedConfig]] = {
        "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
            **_COMMON, **moe, num_experts=8, norm_topk_prob=True, intermediate_size=256
        ),
        "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
            **_COMMON,
            **moe,
            num_experts=8,
            shared_expert_intermediate_size=128,
            intermediate_size=256,
        ),
        "mixtral": lambda: transformers.MixtralConfig(
            **_COMMON, num_local_experts=8, num_experts_per_tok=2, intermediate_size=128
        ),
        "olmoe": lambda: transformers.OlmoeConfig(
            **{k: v for k, v in _COMMON.items() if k != "head_dim"},
            num_experts=8,
            num_experts_per_tok=2,
            intermediate_size=128,
        ),
    }
    if hasattr(transformers, "Qwen3NextConfig"):
        factories["qwen3_next"] = lambda: transformers.Qwen3NextConfig(
            **_COMMON,
            **moe,
            num_experts=8,
            shared_expert_intermediate_size=128,
            intermediate_size=256,
            layer_types=["full_attention"] * 4,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=32,
            linear_value_head_dim=32,
        )
    if hasattr(transformers, "Qwen3_5MoeTextConfig"):
        factories["qwen3_5_moe"] = lambda: transformers.Qwen3_5MoeTextConfig(
            **_COMMON,
            **moe,
            num_experts=8,
            shared_expert_intermediate_size=128,
            layer_types=["full_attention"] * 4,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=32,
            linear_value_head_dim=32,
        )
    return factories


MOE_FAMILY_CONFIGS = _family_configs()


def build_from_config(config: transformers.PretrainedConfig, *, seed: int = _INIT_SEED):
    """Instantiate a causal LM from `config` with seeded weights and live (non-zero) routers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _reinit_routers(model)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model.eval()


def _reinit_routers(model: nn.Module) -> None:
    for module in model.modules():
        if type(module).__name__.lower().endswith("router"):
            nn.init.normal_(module.weight, mean=0.0, std=ROUTER_INIT_STD)


def tiny_moe_config(family: str = "qwen3_moe") -> transformers.PretrainedConfig:
    """Tiny config of one MoE family: 4 layers, hidden 128, 8 experts, top-2."""
    return MOE_FAMILY_CONFIGS[family]()


def tiny_moe_deep_config() -> transformers.PretrainedConfig:
    """The stress testbed's MoE (Qwen3-MoE): 8 MoE layers, 16 experts, top-2, hidden 128.

    Deeper and wider in experts than `tiny-moe` so that routing is as fragile as in real MoE
    models: with 16 narrow experts the 2nd and 3rd router logits are close for many tokens, and
    eight layers let a routing change compound.
    """
    return transformers.Qwen3MoeConfig(
        **{**_COMMON, "num_hidden_layers": 8},
        num_experts=16,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        norm_topk_prob=True,
        intermediate_size=256,
    )


def tiny_dense_config() -> transformers.PretrainedConfig:
    """Tiny Qwen3 (dense): 4 layers, hidden 128, MLP 512, about 1 M parameters."""
    return transformers.Qwen3Config(**_COMMON, intermediate_size=512)


def build_tiny_dense() -> tuple[PreTrainedModel, transformers.PreTrainedTokenizerFast]:
    return build_from_config(tiny_dense_config()), build_byte_tokenizer()


def build_tiny_moe() -> tuple[PreTrainedModel, transformers.PreTrainedTokenizerFast]:
    return build_from_config(tiny_moe_config("qwen3_moe")), build_byte_tokenizer()


def build_tiny_moe_deep() -> tuple[PreTrainedModel, transformers.PreTrainedTokenizerFast]:
    return build_from_config(tiny_moe_deep_config()), build_byte_tokenizer()


TINY_BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, object]]] = {
    "tiny-dense": build_tiny_dense,
    "tiny-moe": build_tiny_moe,
    "tiny-moe-deep": build_tiny_moe_deep,
}
