from __future__ import annotations

import pytest
import torch

from keel_worker.engines.precision import (
    compute_dtype,
    fake_quantize_fp8,
    fake_quantize_fp8_tensor,
    fake_quantize_int4,
    make_engine_copy,
    round_activation_bf16,
    round_activation_fp8,
)


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
    fp8 = make_engine_copy(model, "fp8")
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
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.gate.weight",
                 "model.layers.0.input_layernorm.weight"):  # fmt: skip
        assert torch.equal(copied[name], source[name]), name
    assert compute_dtype(precision) == torch.float32


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
    assert not make_engine_copy(tiny_moe.model, "fp32").model.layers[0].self_attn.q_proj \
        ._forward_pre_hooks
