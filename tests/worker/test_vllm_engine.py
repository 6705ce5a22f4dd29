"""The `vllm` rollout engine on the real vLLM engine (`make test-vllm`: vLLM's CPU backend).

One SmolLM2-135M engine serves the module (an engine start is ~30 s), plus one on a tiny Qwen3 with
head_dim 64 (vLLM's CPU attention needs head_dim ≥ 64) started from a checkpoint keel wrote.
μ is compared with the trainer's own π_old (`PolicyForward`, the code that computes the IS
denominator's counterpart in every step) on the same tokens, so the comparison runs on the tier's
transformers (5.18) as well as on the main venv's (the `hf` engine tests).

Tolerances, fp32 both sides: vLLM's CPU kernels (its own attention, fused RMSNorm, SiLU·mul)
accumulate in another order than transformers' eager modules; the measured max |Δ log p| on
SmolLM2 is 4.9e-5 (AMD EPYC, AVX2; each test prints its own), so 1e-3 leaves room without hiding
a real mistake (a wrong temperature, position id or a dropped KV cache shifts log p by 1e-2 to
10).
"""

from __future__ import annotations

import copy

import pytest
import torch

from keel_worker.core.diagnostics import mismatch_metrics
from keel_worker.engines.base import RolloutBatch
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.precision import bf16_is_native
from keel_worker.engines.vllm import VLLMEngine, VLLMOptions
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward

pytestmark = pytest.mark.vllm

FP32_TOL = 1e-3
TEMPERATURE = 0.7  # not 1, so processed_logprobs' temperature scaling is checked too
PROMPTS = ("hi", "What is 3 + 4? Answer with just the number.")
# Longer than one KV block (128 tokens on vLLM's CPU backend), so it leaves full blocks in the
# prefix cache that a later request could hit.
LONG_PROMPT = "Count the apples: " + "apple, " * 120 + "how many?"


def _options(**overrides) -> VLLMOptions:
    from keel_server.platform.settings import Settings

    return VLLMOptions.from_settings(
        Settings(vllm_kv_cache_gib=0.5, vllm_max_model_len=512, **overrides)
    )


def trainer_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, *, temperature: float
) -> list[torch.Tensor]:
    """log π(y_t) of every response token by the trainer's forward (fp32, no replay)."""
    forward = PolicyForward(model, temperature=temperature, bf16=False, replay=None)
    rows = list(range(len(batch)))
    mb = make_micro_batch(
        rows,
        prompt_ids=batch.prompt_ids,
        response_ids=batch.response_ids,
        rollout_logprobs=batch.rollout_logprobs,
        advantages_PG=torch.zeros(len(rows)),
        routes=None,
        pad_id=0,
    )
    with torch.no_grad():
        logprobs_B_T = forward(mb).logprobs_B_T
    return [logprobs_B_T[i, : len(batch.response_ids[i])] for i in rows]


def max_abs_gap(batch: RolloutBatch, reference: list[torch.Tensor]) -> float:
    return max(
        float((mu - ref).abs().max())
        for mu, ref in zip(batch.rollout_logprobs, reference, strict=True)
    )


def k3(batch: RolloutBatch, reference: list[torch.Tensor]) -> float:
    width = max(len(r) for r in batch.response_ids)
    old_B_T, mu_B_T = torch.zeros(len(batch), width), torch.zeros(len(batch), width)
    mask_B_T = torch.zeros(len(batch), width, dtype=torch.bool)
    for i, (mu, ref) in enumerate(zip(batch.rollout_logprobs, reference, strict=True)):
        old_B_T[i, : len(ref)], mu_B_T[i, : len(mu)], mask_B_T[i, : len(mu)] = ref, mu, True
    return float(mismatch_metrics(old_B_T, mu_B_T, mask_B_T)["mismatch/kl_k3"])


def tiny_qwen3():
    """(model, tokenizer) of a tiny Qwen3 with head_dim 64 (vLLM's CPU attention needs ≥ 64)."""
    import transformers

    from keel_worker.engines.tiny import _COMMON, build_from_config
    from keel_worker.engines.tokenizer import build_byte_tokenizer

    config = transformers.Qwen3Config(
        **{**_COMMON, "head_dim": 64, "num_attention_heads": 2, "num_key_value_heads": 1},
        intermediate_size=256,
    )
    return build_from_config(config), build_byte_tokenizer()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from keel_worker.engines.models import load_model

    return load_model("smollm2-135m-instruct", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def engine(smollm2, tmp_path_factory) -> VLLMEngine:
    return VLLMEngine.from_model(
        smollm2.model,
        smollm2.tokenizer,
        precision="fp32",
        workdir=tmp_path_factory.mktemp("vllm"),
        options=_options(),
    )


def test_engine_settings_reach_vllm(engine):
    """The `KEEL_VLLM_*` settings are what vLLM runs with (rule 17: a knob that is read)."""
    config = engine.llm.llm_engine.vllm_config
    assert config.cache_config.kv_cache_memory_bytes == 512 * 1024 * 1024
    assert config.model_config.max_model_len == 512
    assert config.parallel_config.tensor_parallel_size == 1
    assert config.cache_config.gpu_memory_utilization == 0.3
    assert config.cache_config.enable_prefix_caching


def test_generate_returns_mu_that_matches_the_trainer_in_fp32(engine, smollm2):
    prompts = [encode_prompt(smollm2.tokenizer, t) for t in PROMPTS]
    batch = engine.generate(prompts, n=2, max_new_tokens=8, temperature=TEMPERATURE, seed=0)
    assert len(batch) == 4 and batch.prompt_index == [0, 0, 1, 1] and batch.routes is None
    assert batch.prompt_ids[2] == prompts[1]
    for response, mu, reason in zip(
        batch.response_ids, batch.rollout_logprobs, batch.finish_reasons, strict=True
    ):
        assert 1 <= len(response) <= 8 and mu.shape == (len(response),) and (mu <= 0).all()
        assert reason == ("stop" if response[-1] == smollm2.tokenizer.eos_token_id else "length")
    reference = trainer_logprobs(smollm2.model, batch, temperature=TEMPERATURE)
    gap = max_abs_gap(batch, reference)
    print(
        f"\nvLLM fp32 vs trainer fp32 (SmolLM2, T={TEMPERATURE}): max |Δ log p| {gap:.2e}, "
        f"k3 {k3(batch, reference):.2e}"
    )
    assert gap < FP32_TOL
    # Not the trainer at another temperature: the check can tell the two apart.
    assert max_abs_gap(batch, trainer_logprobs(smollm2.model, batch, temperature=1.0)) > 1e-2


def test_hf_engine_matches_the_trainer_on_this_transformers(smollm2):
    """The `hf` engine's μ vs the trainer, on whichever transformers this venv has."""
    import transformers

    from keel_worker.engines.hf import HFEngine

    hf = HFEngine(smollm2.model, smollm2.tokenizer, precision="fp32")
    prompts = [encode_prompt(smollm2.tokenizer, t) for t in PROMPTS]
    batch = hf.generate(prompts, n=2, max_new_tokens=8, temperature=TEMPERATURE, seed=0)
    gap = max_abs_gap(batch, trainer_logprobs(smollm2.model, batch, temperature=TEMPERATURE))
    print(f"\nhf fp32 vs trainer on transformers {transformers.__version__}: {gap:.2e}")
    assert gap < 1e-4  # measured 1.4e-5 on 5.18 (30 layers: more rounding than the tiny models)


def test_weight_sync_serves_the_updated_policy_not_a_cached_old_one(engine, smollm2):
    """After an optimizer step and `load_weights`, μ is the new policy's, also for a prompt
    whose blocks the prefix cache holds from before the update."""
    from keel.types.training import TrainingConfig
    from keel_worker.training.step import Trainer
    from keel_worker.training.tasks import build_task

    model = smollm2.model
    old_model = copy.deepcopy(model)
    long_prompt = encode_prompt(smollm2.tokenizer, LONG_PROMPT)
    assert len(long_prompt) > 128
    before = engine.generate([long_prompt], n=1, max_new_tokens=6, temperature=1.0, seed=3)
    assert max_abs_gap(before, trainer_logprobs(model, before, temperature=1.0)) < FP32_TOL

    config = TrainingConfig(
        model={"name": "smollm2-135m-instruct"},
        prompts_per_step=1,
        group_size=2,
        num_minibatches=1,
        eval_every=0,
        optimizer={"lr": 1e-4},
        rollout={"engine": "vllm", "max_new_tokens": 4},
    )
    trainer = Trainer(config, model, smollm2.tokenizer, engine, is_moe=False)
    items = build_task(config.task).train_items[:1]
    version = engine.policy_version
    # Rewards 0 and 1 in the group: a non-zero advantage, so the step changes the weights.
    metrics = trainer.step(items, lambda rs: [float(r.sample_index) for r in rs], seed=0)
    assert metrics["policy/version"] == 1.0 and engine.policy_version == version + 1

    after = engine.generate([long_prompt], n=1, max_new_tokens=6, temperature=1.0, seed=3)
    new_gap = max_abs_gap(after, trainer_logprobs(model, after, temperature=1.0))
    old_gap = max_abs_gap(after, trainer_logprobs(old_model, after, temperature=1.0))
    print(f"\nafter one AdamW step (lr 1e-4): μ vs new π {new_gap:.2e}, vs old π {old_gap:.2e}")
    assert new_gap < FP32_TOL < old_gap


@pytest.mark.skipif(not bf16_is_native(), reason="bf16 is emulated on this CPU (AVX2 only)")
def test_bf16_mismatch_is_reported(smollm2, tmp_path):
    """bf16 rollouts against the fp32 trainer: the training–inference mismatch MiniRL corrects."""
    bf16 = VLLMEngine.from_model(
        smollm2.model, smollm2.tokenizer, precision="bf16", workdir=tmp_path, options=_options()
    )
    prompts = [encode_prompt(smollm2.tokenizer, t) for t in PROMPTS]
    batch = bf16.generate(prompts, n=4, max_new_tokens=16, temperature=1.0, seed=0)
    reference = trainer_logprobs(smollm2.model, batch, temperature=1.0)
    kl_k3, gap = k3(batch, reference), max_abs_gap(batch, reference)
    print(f"\nvLLM bf16 vs trainer fp32 (SmolLM2): k3 KL {kl_k3:.2e}, max |Δ log p| {gap:.2e}")
    assert 0 < kl_k3 < 0.1 and gap > FP32_TOL


def test_a_keel_checkpoint_loads_unchanged_in_vllm_and_generates(tmp_path):
    """A tiny Qwen3 (head_dim 64) saved by `save_checkpoint` is served by `vllm.LLM` as is."""
    from keel_worker.training.checkpoint import TrainerState, checkpoint_dir, save_checkpoint

    model, tokenizer = tiny_qwen3()
    state = TrainerState(step=1, policy_version=1, data_cursor=0, optimizer={})
    ckpt = save_checkpoint(
        checkpoint_dir(tmp_path, 1), model=model, tokenizer=tokenizer, state=state
    )
    engine = VLLMEngine(ckpt, options=_options(), precision="fp32")
    prompts = [encode_prompt(tokenizer, t) for t in PROMPTS]
    batch = engine.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, seed=0)
    assert len(batch) == 4 and all(len(r) >= 1 for r in batch.response_ids)
    gap = max_abs_gap(batch, trainer_logprobs(model, batch, temperature=1.0))
    print(f"\nvLLM fp32 on a keel checkpoint (tiny Qwen3, head_dim 64) vs trainer: {gap:.2e}")
    assert gap < FP32_TOL


def _move_adapters(model, seed: int) -> None:
    """What an update does: every B (zero at the start) gets a seeded non-zero value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_vllm_samples_the_merged_lora_policy(tmp_path):
    """A LoRA run's engine (merged-weight sync, engines/vllm.py): vLLM starts from the merged
    weights `from_model` writes, and after an adapter update `load_weights` makes μ follow
    base + adapter, not the base it started from."""
    from keel.types.training import LoraConfig
    from keel_worker.training.lora import apply_lora

    base, tokenizer = tiny_qwen3()
    policy = apply_lora(copy.deepcopy(base), LoraConfig(rank=4))
    _move_adapters(policy, seed=0)
    engine = VLLMEngine.from_model(
        policy, tokenizer, precision="fp32", workdir=tmp_path / "vllm", options=_options()
    )
    prompts = [encode_prompt(tokenizer, t) for t in PROMPTS]

    def gap(model, batch) -> float:
        return max_abs_gap(batch, trainer_logprobs(model, batch, temperature=1.0))

    first = engine.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, seed=0)
    assert gap(policy, first) < FP32_TOL
    _move_adapters(policy, seed=1)
    engine.load_weights(policy)
    second = engine.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, seed=0)
    assert gap(policy, second) < FP32_TOL
    assert gap(base, second) > 10 * FP32_TOL  # the adapters moved it: the checks can fail
