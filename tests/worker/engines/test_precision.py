from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hardware import cpu_model_name, device_profile, gemm_gflops
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.precision import (
    FP8_KV_SDPA,
    EmulatedBf16,
    compute_dtype,
    engine_bf16_native,
    make_engine_copy,
    sdpa_bf16,
)
from keel_worker.engines.quantize import (
    INT2_GROUP,
    INT4_GROUP,
    fake_quantize_fp8,
    fake_quantize_fp8_tensor,
    fake_quantize_int2,
    fake_quantize_int3,
    fake_quantize_int4,
    fake_quantize_int4_channel,
    round_activation_bf16,
    round_activation_fp8,
    round_kv_fp8,
)
from keel_worker.engines.vllm import VLLMEngine, VLLMOptions


def test_fp8_fake_quant_by_hand() -> None:
    # Row 0: absmax 448 gives scale 1; 448, 1 and 0.5 are on the e4m3 grid and stay.
    # Row 1: absmax 1 gives scale 1/448; 0.3·448 = 134.4 lies between the grid points 128 and
    # 144 (3 mantissa bits: step 16 in [128, 256)) and rounds to 128, i.e. 128/448.
    weight = torch.tensor([[448.0, 1.0, 0.5], [1.0, 0.3, 0.0]])
    quantized = fake_quantize_fp8(weight)
    torch.testing.assert_close(quantized[0], weight[0])
    torch.testing.assert_close(quantized[1], torch.tensor([1.0, 128 / 448, 0.0]))


def test_engine_copies_are_separate_and_at_their_precision(tiny_dense) -> None:
    model = tiny_dense.model
    fp32 = make_engine_copy(model, "fp32")
    fp8 = make_engine_copy(model, "fp8", bf16_native=True)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    params = dict(model.named_parameters())
    assert torch.equal(dict(fp32.named_parameters())[q_proj], params[q_proj])
    fp8_q = dict(fp8.named_parameters())[q_proj]
    assert fp8_q.dtype == torch.bfloat16
    assert not torch.equal(fp8_q.float(), params[q_proj].bfloat16().float())
    # Embeddings stay unquantized (only cast to the compute dtype).
    embed = "model.embed_tokens.weight"
    assert torch.equal(dict(fp8.named_parameters())[embed], params[embed].bfloat16())
    assert fp32.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    # Where bf16 is not native, the copy holds the same bf16 values in float32.
    emulated = dict(make_engine_copy(model, "fp8", bf16_native=False).named_parameters())
    assert emulated[q_proj].dtype == torch.float32
    assert torch.equal(emulated[q_proj], fp8_q.float())
    assert torch.equal(emulated[embed], params[embed].bfloat16().float())


def test_int4_group_quant_by_hand() -> None:
    # One group of 4: min −1, max 2 → scale 3/15 = 0.2, zero point round(1/0.2) = 5.
    # −1 → level 0 → −1.0; 0 → level 5 → 0.0; 0.5/0.2 = 2.5 rounds half to even → 2, level 7 →
    # 0.4; 2 → level 15 → 2.0. A second group [0, 0, 0, 0.3]: min clamps to 0, scale 0.02,
    # zero 0; 0.3 → level 15 → 0.3.
    weight = torch.tensor([[-1.0, 0.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.3]])
    quantized = fake_quantize_int4(weight, group=4)
    torch.testing.assert_close(quantized, torch.tensor([[-1.0, 0.0, 0.4, 2.0, 0, 0, 0, 0.3]]))
    with pytest.raises(ValueError, match="multiple of 4"):
        fake_quantize_int4(torch.ones(2, 6), group=4)


def _levels_per_group(quantized: torch.Tensor, group: int) -> torch.Tensor:
    grouped = quantized.reshape(*quantized.shape[:-1], -1, group)
    return torch.tensor([len(torch.unique(g)) for g in grouped.reshape(-1, group)])


def test_int3_and_int2_keep_at_most_8_and_4_levels_per_group() -> None:
    weight = torch.randn(6, 2 * INT4_GROUP, generator=torch.Generator().manual_seed(0))
    int3, int2 = fake_quantize_int3(weight), fake_quantize_int2(weight)
    levels3, levels2 = _levels_per_group(int3, INT4_GROUP), _levels_per_group(int2, INT2_GROUP)
    assert levels3.max() <= 8 and levels3.min() >= 7  # Gaussian groups use (nearly) every level
    assert levels2.max() <= 4 and levels2.min() >= 3
    # Fewer bits, larger error; each rounding is idempotent (its values are on its own grid).
    errors = [(q - weight).abs().mean() for q in (fake_quantize_int4(weight), int3, int2)]
    assert errors[0] < errors[1] < errors[2]
    torch.testing.assert_close(fake_quantize_int3(int3), int3)
    # By hand, one group of 4 [−1, 0, 0.5, 2]: 3 bits give scale 3/7, zero point
    # round(7/3) = 2; 0.5 / (3/7) = 1.17 → level 3 → 3/7; 2 → 4.67 → 5 + 2 = 7 → 15/7.
    torch.testing.assert_close(
        fake_quantize_int3(torch.tensor([[-1.0, 0.0, 0.5, 2.0]]), group=4),
        torch.tensor([[-6 / 7, 0.0, 3 / 7, 15 / 7]]),
    )


def test_per_channel_int4_is_symmetric_with_one_scale_per_row() -> None:
    # Row absmax 7 → scale 1: 2.4 → 2, −3.5 → −4 (half to even), −7 → −7; the row of 256 has
    # one scale, unlike int4's groups of 128, so its small half loses what groups keep.
    torch.testing.assert_close(
        fake_quantize_int4_channel(torch.tensor([[7.0, 2.4, -3.5, -7.0]])),
        torch.tensor([[7.0, 2.0, -4.0, -7.0]]),
    )
    row = torch.cat([torch.full((128,), 7.0), torch.linspace(-0.1, 0.1, 128)])[None]
    per_channel, grouped = fake_quantize_int4_channel(row), fake_quantize_int4(row)
    assert len(torch.unique(per_channel)) <= 16
    assert torch.all(per_channel[0, 128:] == 0)  # below half a step of 1: all rounded away
    assert (grouped[0, 128:] - row[0, 128:]).abs().max() < 0.01


def test_fp8_kv_rounding_is_elementwise_idempotent_and_saturates() -> None:
    # Scale 1: 1.1 lies in [1, 2) where e4m3 steps by 1/8 → 1.125; 500 saturates at 448;
    # 3e-3 is subnormal (steps of 2^-9 ≈ 1.95e-3) → 2^-9 · 2 = 3.9e-3.
    x = torch.tensor([1.1, -500.0, 3e-3, 0.0])
    torch.testing.assert_close(round_kv_fp8(x), torch.tensor([1.125, -448.0, 2**-8, 0.0]))
    keys = torch.randn(2, 2, 9, 32, generator=torch.Generator().manual_seed(1)) * 3
    once = round_kv_fp8(keys)
    assert torch.equal(round_kv_fp8(once), once)
    # Elementwise with a fixed scale: a cached token's key rounds the same whatever comes later.
    assert torch.equal(round_kv_fp8(keys[:, :, :4]), once[:, :, :4])


def test_kv_fp8_keeps_fp32_weights_and_rounds_keys_and_values_in_attention(tiny_moe) -> None:
    engine = make_engine_copy(tiny_moe.model, "kv_fp8")
    assert engine.config._attn_implementation == FP8_KV_SDPA
    assert tiny_moe.model.config._attn_implementation == "sdpa"  # the trainer's stays exact
    source, copied = dict(tiny_moe.model.named_parameters()), dict(engine.named_parameters())
    assert all(torch.equal(copied[n], source[n]) for n in source)
    with_int4 = make_engine_copy(tiny_moe.model, "int4_kv_fp8")
    assert with_int4.config._attn_implementation == FP8_KV_SDPA
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(
        dict(with_int4.named_parameters())[q_proj], fake_quantize_int4(source[q_proj])
    )
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    fp32_logits = make_engine_copy(tiny_moe.model, "fp32")(ids).logits
    assert not torch.equal(engine(ids).logits, fp32_logits)


def test_int4_router_quantizes_the_gates_that_int4_leaves_alone(tiny_moe) -> None:
    gate = "model.layers.0.mlp.gate.weight"
    source = dict(tiny_moe.model.named_parameters())[gate]
    int4 = dict(make_engine_copy(tiny_moe.model, "int4").named_parameters())[gate]
    routed = make_engine_copy(tiny_moe.model, "int4_router")
    assert torch.equal(int4, source)
    assert torch.equal(dict(routed.named_parameters())[gate], fake_quantize_int4(source))
    seen = []
    routed.model.layers[0].mlp.gate.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].clone())
    )
    routed(torch.tensor([[5, 6, 7]]))
    assert torch.equal(seen[0], seen[0].bfloat16().float())  # W4A16: its input in bf16 too


NEW_PRECISIONS = (
    "int3",
    "int2",
    "int4_channel",
    "int4_router",
    "kv_fp8",
    "int4_kv_fp8",
    "int3_kv_fp8",
)


@pytest.mark.parametrize("precision", NEW_PRECISIONS)
def test_vllm_refuses_the_hf_only_precisions(precision, tmp_path) -> None:
    options = VLLMOptions(None, 0, None, 0.5, 1)
    with pytest.raises(ValueError, match="hf-engine emulation"):
        VLLMEngine(tmp_path, options=options, precision=precision)


def test_per_tensor_fp8_loses_small_channels_that_per_channel_keeps() -> None:
    # Per tensor the scale is 448/448 = 1, so row 1 (values 1e-3) falls to the e4m3 subnormals:
    # 1e-3 / 2^-9 = 0.51 rounds to one subnormal step, 2^-9 ≈ 1.95e-3 (a 95% error); per channel
    # row 1 gets its own scale and keeps its value to e4m3's 3 mantissa bits.
    weight = torch.tensor([[448.0, 100.0], [1e-3, 1e-3]])
    per_tensor = fake_quantize_fp8_tensor(weight)
    per_channel = fake_quantize_fp8(weight)
    torch.testing.assert_close(per_tensor[1], torch.full((2,), 2.0**-9))
    torch.testing.assert_close(per_channel[1], weight[1])
    torch.testing.assert_close(per_tensor[0], per_channel[0])


@pytest.mark.parametrize("precision", ["fp8_tensor", "int4"])
def test_weight_only_precisions_round_matrices_and_compute_in_fp32(tiny_moe, precision) -> None:
    model = tiny_moe.model
    engine = make_engine_copy(model, precision)
    source, copied = dict(model.named_parameters()), dict(engine.named_parameters())
    assert all(p.dtype == torch.float32 for p in copied.values())
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.experts.down_proj"):
        assert not torch.equal(copied[name], source[name]), name
    for name in (
        "model.embed_tokens.weight",
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.input_layernorm.weight",
    ):
        assert torch.equal(copied[name], source[name]), name
    assert compute_dtype(precision, bf16_native=True) == torch.float32


def test_w8a8_rounds_activations_per_tensor_and_w4a16_to_bf16(tiny_moe) -> None:
    # fp8 activations: the absmax 896 maps to 448 (scale 2), so 2 → 1.0 stays; 0.6 → 0.3 lies in
    # [0.25, 0.5) where e4m3's 3 mantissa bits step by 0.25/8 = 0.03125: 0.3 / 0.03125 = 9.6
    # rounds to 10, i.e. 0.3125, times the scale 2 = 0.625.
    x = torch.tensor([896.0, 2.0, 0.6])
    torch.testing.assert_close(round_activation_fp8(x), torch.tensor([896.0, 2.0, 0.625]))
    y = torch.tensor([1.0 + 2**-10])  # below bf16's 8 bits of mantissa: rounds to 1.0
    assert round_activation_bf16(y).item() == 1.0
    seen = []
    engine = make_engine_copy(tiny_moe.model, "int4")
    q_proj = engine.model.layers[0].self_attn.q_proj
    q_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    engine(torch.tensor([[5, 6, 7]]))
    assert torch.equal(seen[0], seen[0].bfloat16().float())  # the rounding hook ran first
    assert (
        not make_engine_copy(tiny_moe.model, "fp32")
        .model.layers[0]
        .self_attn.q_proj._forward_pre_hooks
    )


# ---- bf16 computed natively or emulated in fp32 (engines.hardware decides which) --------------


def test_compute_dtype_follows_the_machine() -> None:
    assert compute_dtype("bf16", bf16_native=True) == torch.bfloat16
    assert compute_dtype("bf16", bf16_native=False) == torch.float32
    assert compute_dtype("fp8", bf16_native=False) == torch.float32
    assert compute_dtype("fp32", bf16_native=True) == torch.float32


def test_emulated_attention_reproduces_the_native_bf16_kernel() -> None:
    # The CPU kernel keeps scores and softmax statistics in fp32 and rounds the unnormalized
    # probabilities to bf16 before the product with V; within one block of keys the emulation is
    # bit-identical here. The bound is one bf16 step (2^-8 relative), for other kernels' blocking.
    # Plain fp32 attention on the same bf16 inputs differs from it in about 20 % of outputs.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 7, 16, generator=g).bfloat16() for h in (4, 2, 2))
    native = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).float()
    emulated = sdpa_bf16(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    torch.testing.assert_close(emulated, native, rtol=2**-8, atol=1e-6)
    plain = (
        F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True
        )
        .bfloat16()
        .float()
    )
    assert (plain != native).float().mean() > 0.05
    # A fully masked query row (left padding) gives zeros, not NaN.
    mask = torch.zeros(2, 1, 7, 7, dtype=torch.bool)
    assert torch.equal(
        sdpa_bf16(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True),
        torch.zeros(2, 4, 7, 16),
    )


def _rollout(loaded, precision: str, bf16_native: bool | None):
    engine = HFEngine(loaded.model, loaded.tokenizer, precision=precision, bf16_native=bf16_native)
    prompts = [encode_prompt(loaded.tokenizer, p) for p in ("hi", "What is 3 + 4?", "abc", "x y")]
    return engine.generate(prompts, n=4, max_new_tokens=16, temperature=1.0, seed=0)


def _logprob_gap(a, b) -> tuple[torch.Tensor, int, int]:
    """|Δ logprob| over the tokens two rollouts of the same seed share (each row up to its first
    differing token), the number of shared tokens and of all tokens of `a`."""
    gaps, shared = [], 0
    for ta, tb, la, lb in zip(
        a.response_ids, b.response_ids, a.rollout_logprobs, b.rollout_logprobs, strict=True
    ):
        n = 0
        while n < min(len(ta), len(tb)) and ta[n] == tb[n]:
            n += 1
        gaps.append((la[:n] - lb[:n]).abs())
        shared += n
    return torch.cat(gaps), shared, sum(len(t) for t in a.response_ids)


def test_emulated_bf16_rollouts_keep_the_bf16_mismatch(tiny_dense) -> None:
    """The emulated engine is not silently fp32: its logprobs differ from the fp32 engine's by
    what bf16 weights and activations cause, as much as a native bf16 engine's do, and it samples
    nearly the same tokens as the native one.

    Measured on tiny-dense (AMD EPYC, AVX2): mean |Δ logprob| emulated vs fp32 1.1e-3, native vs
    fp32 1.3e-3, emulated vs native 1.2e-3 (max 5.7e-3), against 2e-7 for fp32 vs the trainer.
    The two bf16 paths round the same values but not in the same order everywhere (a native op
    rounds its result; the emulation rounds module and op outputs, norms excepted), and one ulp
    of difference anywhere propagates, so they agree in distribution, not bit for bit: the
    tolerances are a factor 2 on the mean gap against fp32, 2× the native-vs-fp32 gap between
    the two bf16 paths and 0.05 on any token."""
    fp32 = _rollout(tiny_dense, "fp32", None)
    native = _rollout(tiny_dense, "bf16", True)
    emulated = _rollout(tiny_dense, "bf16", False)
    emulated_vs_fp32, shared_fp32, total = _logprob_gap(emulated, fp32)
    native_vs_fp32, _, _ = _logprob_gap(native, fp32)
    emulated_vs_native, shared_native, _ = _logprob_gap(emulated, native)
    assert emulated_vs_fp32.mean() > 2e-4  # fp32 itself: ~2e-7 (test_hf)
    assert 0.5 < emulated_vs_fp32.mean() / native_vs_fp32.mean() < 2.0
    assert emulated_vs_native.mean() < 2 * native_vs_fp32.mean()
    assert emulated_vs_native.max() < 0.05
    assert shared_native > 0.8 * total and shared_fp32 > 0.8 * total


def test_emulated_bf16_training_matches_autocast_in_distribution(tiny_dense) -> None:
    """`EmulatedBf16(linear=True)` (train_dtype bf16 where bf16 is not native) rounds what bf16
    autocast rounds, gradients included: not silently fp32, and as far from fp32 as autocast.

    Measured on tiny-dense (AVX2): mean |Δ logprob| emulated vs autocast 1.1e-3, emulated vs
    fp32 1.2e-3, autocast vs fp32 1.3e-3; relative gradient difference ‖g − g'‖/‖g'‖ 1.0e-2,
    1.0e-2 and 1.1e-2 (fp32 against itself: 0). As for the rollouts, the two bf16 paths agree in
    distribution, not bit for bit; the tolerances are a factor 2."""
    model = tiny_dense.model
    ids = torch.randint(3, 300, (4, 20), generator=torch.Generator().manual_seed(0))

    def logprobs_and_grad(context):
        model.zero_grad(set_to_none=True)
        with context:
            logits = model(ids).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        lp.sum().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return lp.detach(), grad

    fp32, g_fp32 = logprobs_and_grad(contextlib.nullcontext())
    autocast, g_autocast = logprobs_and_grad(torch.autocast("cpu", dtype=torch.bfloat16))
    emulated, g_emulated = logprobs_and_grad(EmulatedBf16(linear=True))

    def gap(a, b):
        return (a - b).abs().mean().item()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert gap(emulated, fp32) > 2e-4 and rel(g_emulated, g_fp32) > 2e-3
    assert 0.5 < gap(emulated, fp32) / gap(autocast, fp32) < 2.0
    assert 0.5 < rel(g_emulated, g_fp32) / rel(g_autocast, g_fp32) < 2.0
    assert gap(emulated, autocast) < 2 * gap(autocast, fp32)
    assert rel(g_emulated, g_autocast) < 2 * rel(g_autocast, g_fp32)


def test_device_profile_is_measured_once_and_decides_by_its_rule() -> None:
    profile = device_profile("cpu")
    assert device_profile("cpu") is profile  # cached per process
    assert profile.name == cpu_model_name() and profile.device == "cpu"
    assert set(profile.gemm_gflops) == {"fp32", "bf16"}
    assert all(rate > 0 for rate in profile.gemm_gflops.values())
    assert set(profile.bf16_support) <= {"amx_bf16", "avx512_bf16"}
    rates = profile.gemm_gflops
    assert profile.bf16_native == (bool(profile.bf16_support) and rates["bf16"] >= rates["fp32"])
    # The engine follows it for the bf16-computing precisions only.
    assert engine_bf16_native("bf16") == profile.bf16_native
    assert engine_bf16_native("int4") is False
    # One 256² product is 2·256³ FLOPs: the rate is that over the measured time, in GFLOP/s.
    assert 0 < gemm_gflops(torch.float32, size=64, budget_s=0.01) < 1e5


def test_every_new_precision_moves_the_rollout_logprobs_off_fp32(tiny_moe) -> None:
    """The engine's μ logprobs at each new precision differ from the fp32 engine's on the tokens
    both sample alike (same seed), by what its rounding causes; fp32 itself matches the trainer
    to ~2e-7 (test_hf). Measured on tiny-moe (AMD EPYC), mean |Δ logprob| against fp32: int4
    0.042, int4_channel 0.053, int4_router 0.042, int3 0.10, int2 0.20, kv_fp8 0.0056,
    int4_kv_fp8 0.037, int3_kv_fp8 0.086. The floor is 5× under the smallest (kv_fp8); fewer
    bits must move them further (one torch thread: 8 tiny rollouts take seconds, where two
    threads on a loaded 2-core machine took minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = _rollout(tiny_moe, "fp32", None)
        gaps = {}
        for precision in ("int4", *NEW_PRECISIONS):
            gap, shared, _ = _logprob_gap(_rollout(tiny_moe, precision, None), fp32)
            gaps[precision] = float(gap.mean())
            assert shared > 0, precision
    finally:
        torch.set_num_threads(threads)
    assert all(g > 1e-3 for g in gaps.values()), gaps
    assert gaps["int2"] > gaps["int3"] > gaps["int4"], gaps
