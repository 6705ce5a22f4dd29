from __future__ import annotations

import torch

from keel_worker.engines.precision import fake_quantize_fp8, make_engine_copy


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
