"""The resident model's state across calls: gradient accumulation, AdamW, save/load, LoRA,
refusals that change nothing, and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinker_helpers import grads_of, resident, rl_datum, toy_datum, weights_of

from keel_worker.engines.hf import HFEngine
from keel_worker.tinker.batch import AdamParams, Datum, SamplingParams

ADAM = AdamParams(learning_rate=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.01)


def _batch() -> list[Datum]:
    prompts = [[1, 40, 41, 42], [1, 50, 51], [1, 60, 61, 62, 63]]
    return [
        rl_datum([*p, 70 + i, 80 + i, 90], n_prompt=len(p), seed=i) for i, p in enumerate(prompts)
    ]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "minirl"])
def test_chunked_calls_accumulate_the_one_call_gradient(loss_fn):
    """One datum per micro-batch: the same forwards, only the order of the `.grad` sums
    differs, so the gradients agree to float rounding."""
    data = _batch()
    whole = resident(micro_batch_size=1)
    one = whole.forward(data, loss_fn, None, backward=True)
    chunked = resident(micro_batch_size=1)
    first = chunked.forward(data[:1], loss_fn, None, backward=True)
    rest = chunked.forward(data[1:], loss_fn, None, backward=True)
    assert _max_diff(grads_of(whole), grads_of(chunked)) < 1e-6
    assert one.metrics["loss:sum"] == pytest.approx(
        first.metrics["loss:sum"] + rest.metrics["loss:sum"], abs=1e-5
    )
    # A second identical call doubles the gradient: it accumulates until optim_step.
    before = grads_of(chunked)
    chunked.forward(data, loss_fn, None, backward=True)
    scale = max(float(g.abs().max()) for g in before.values())  # float32 rounding of the sum
    assert _max_diff({k: 2 * v for k, v in before.items()}, grads_of(chunked)) < 1e-6 * scale


def test_padded_micro_batches_change_the_gradient_by_rounding_only():
    """Three data padded into one micro-batch vs. one then two: the padded forward rounds
    differently (about 4e-6 of the largest entry), nothing more."""
    data = _batch()
    whole = resident()
    whole.forward(data, "importance_sampling", None, backward=True)
    chunked = resident()
    chunked.forward(data[:1], "importance_sampling", None, backward=True)
    chunked.forward(data[1:], "importance_sampling", None, backward=True)
    scale = max(float(g.abs().max()) for g in grads_of(whole).values())
    assert _max_diff(grads_of(whole), grads_of(chunked)) < 1e-5 * scale


def test_forward_only_leaves_no_gradient():
    model = resident()
    model.forward(_batch(), "importance_sampling", None, backward=False)
    assert grads_of(model) == {}


def test_optim_step_applies_adamw_then_zeroes_the_gradients():
    model = resident()
    before = weights_of(model)
    model.forward(_batch(), "importance_sampling", None, backward=True)
    metrics = model.optim_step(ADAM)
    assert model.version == 1
    assert metrics["policy/version"] == 1.0 and metrics["optim/lr"] == ADAM.learning_rate
    assert _max_diff(before, weights_of(model)) > 1e-4
    assert grads_of(model) == {}


def test_grad_clip_norm_clips_the_global_norm():
    model = resident()
    model.forward(_batch(), "importance_sampling", None, backward=True)
    norm = model.optim_step(AdamParams(learning_rate=0.0, grad_clip_norm=1e-3))["optim/grad_norm"]
    assert norm > 1e-3  # the norm before clipping is reported, as torch returns it
    model.forward(_batch(), "importance_sampling", None, backward=True)
    total = torch.sqrt(sum(p.grad.square().sum() for p in model.params if p.grad is not None))
    torch.nn.utils.clip_grad_norm_(model.params, 1e-3)
    clipped = torch.sqrt(sum(p.grad.square().sum() for p in model.params if p.grad is not None))
    assert float(total) == pytest.approx(norm, rel=1e-4)
    assert float(clipped) == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("optimizer", [True, False])
def test_save_load_round_trip_and_the_next_step(tmp_path, optimizer):
    data = _batch()
    model = resident()
    model.forward(data, "importance_sampling", None, backward=True)
    model.optim_step(ADAM)
    model.save(tmp_path, optimizer=optimizer)
    saved = weights_of(model)
    model.forward(data, "importance_sampling", None, backward=True)
    model.optim_step(ADAM)
    continued = weights_of(model)

    restored = resident()
    restored.load(tmp_path, optimizer=optimizer)
    assert restored.version == 1
    assert _max_diff(saved, weights_of(restored)) == 0.0
    restored.forward(data, "importance_sampling", None, backward=True)
    restored.optim_step(ADAM)
    diff = _max_diff(continued, weights_of(restored))
    if optimizer:
        assert diff < 1e-6  # AdamW's moments came back: the same second step
    else:
        assert diff > 1e-5  # fresh moments: a first step's size again, not the continuation


def test_load_without_saved_optimizer_is_refused(tmp_path):
    model = resident()
    model.save(tmp_path, optimizer=False)
    with pytest.raises(ValueError, match="no optimizer state"):
        resident().load(tmp_path, optimizer=True)


def test_lora_trains_only_the_adapters_of_the_given_rank(tmp_path):
    model = resident(lora_rank=4)
    trainable = {n: p for n, p in model.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(min(p.shape) == 4 for p in trainable.values())
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters() if "lora_" not in n}
    model.forward(_batch(), "importance_sampling", None, backward=True)
    model.optim_step(AdamParams(learning_rate=1e-2))
    after = {n: p for n, p in model.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    moved = [n for n, p in model.model.named_parameters() if "lora_B" in n and p.abs().max() > 0]
    assert moved  # B starts at zero; one step moves it

    model.save(tmp_path, optimizer=True)
    restored = resident(lora_rank=4, seed=1)
    restored.load(tmp_path, optimizer=True)
    assert _max_diff(weights_of(model), weights_of(restored)) == 0.0
    with pytest.raises(ValueError, match="lora_rank 4"):
        resident().load(tmp_path, optimizer=False)


def test_save_for_sampler_writes_a_plain_model_of_the_merged_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    model = resident(lora_rank=4)
    model.forward(_batch(), "importance_sampling", None, backward=True)
    model.optim_step(AdamParams(learning_rate=1e-2))
    model.save_for_sampler(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    datum = _batch()[0]
    expected = model.forward([datum], "importance_sampling", None, backward=False)
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([datum.tokens])).logits[0]
    logprobs = torch.log_softmax(logits, -1)[
        torch.arange(len(datum.tokens)), datum.inputs["target_tokens"]
    ]
    np.testing.assert_allclose(logprobs.numpy(), expected.outputs[0]["logprobs"], atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"advantages": np.zeros(3, dtype=np.float32)},
            "datum 1: loss_fn_inputs\\['advantages'\\] has shape \\[3\\]",
        ),
        ({"weights": np.zeros(2, dtype=np.float32)}, "datum 1: .*unknown \\['weights'\\]"),
        ({"advantages": np.array([np.nan, 0.0], dtype=np.float32)}, "datum 1: .*non-finite"),
        ({"target_tokens": np.array([1, 10_000])}, "datum 1: .*outside"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(bad, message):
    model = resident()
    good = toy_datum(logprobs=[-5.0, -5.0], advantages=[1.0, 1.0])
    model.forward([good], "importance_sampling", None, backward=True)
    before = grads_of(model)
    broken = toy_datum(logprobs=[-5.0, -5.0], advantages=[1.0, 1.0])
    broken = Datum(broken.tokens, {**broken.inputs, **bad})
    with pytest.raises(ValueError, match=message):
        model.forward([good, broken], "importance_sampling", None, backward=True)
    assert _max_diff(before, grads_of(model)) == 0.0


def test_missing_input_names_the_datum_and_the_input():
    model = resident()
    with pytest.raises(
        ValueError, match=r"datum 0: loss 'cross_entropy' needs .*missing \['weights'\]"
    ):
        model.forward([toy_datum()], "cross_entropy", None, backward=True)


def test_sampling_with_a_seed_is_deterministic_and_reports_engine_logprobs():
    model = resident()
    params = SamplingParams(max_tokens=6, seed=7, temperature=1.0, stop=[])
    first = model.sample([1, 72, 105], params, 3)
    again = model.sample([1, 72, 105], params, 3)
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    assert len({tuple(s.tokens) for s in first.sequences}) > 1
    assert all(len(s.tokens) == 6 and s.stop_reason == "length" for s in first.sequences)
    # The engine's μ equals the trainer's π of the same tokens (fp32, temperature 1).
    seq = first.sequences[0]
    tokens = [1, 72, 105, *seq.tokens]
    datum = Datum(
        tokens[:-1],
        {
            "target_tokens": np.array(tokens[1:]),
            "weights": np.ones(len(tokens) - 1, dtype=np.float32),
        },
    )
    pi = model.forward([datum], "cross_entropy", None, backward=False).outputs[0]["logprobs"][2:]
    np.testing.assert_allclose(seq.logprobs, pi, atol=1e-5)


def test_sampling_follows_the_weights_after_optim_step():
    model = resident()
    params = SamplingParams(max_tokens=4, seed=3, stop=[])
    before = model.sample([1, 72], params, 1).sequences[0].logprobs
    model.forward(_batch(), "importance_sampling", None, backward=True)
    model.optim_step(AdamParams(learning_rate=1e-2))
    after = model.sample([1, 72], params, 1).sequences[0].logprobs
    assert not np.allclose(before, after, atol=1e-4)


def _sequences(result) -> list[tuple[list[int], list[float]]]:
    return [(s.tokens, s.logprobs) for s in result.sequences]


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_sampling_saved_weights_leaves_the_live_ones_untouched(tmp_path, lora_rank):
    """The engine shares the policy's tensors; `weights_from` loads the saved weights into a
    private copy, so the policy stays bit-identical and the next sample is the live one's."""
    from transformers import AutoModelForCausalLM

    model = resident(lora_rank=lora_rank)
    adam = AdamParams(learning_rate=1e-2)
    model.forward(_batch(), "importance_sampling", None, backward=True)
    model.optim_step(adam)
    model.save_for_sampler(tmp_path)
    model.forward(_batch(), "importance_sampling", None, backward=True)
    model.optim_step(adam)  # the live weights move on from the saved ones
    live = weights_of(model)
    params = SamplingParams(max_tokens=6, seed=5, temperature=1.0, stop=[])
    before = _sequences(model.sample([1, 72], params, 2))

    with model.weights_from(tmp_path):
        saved = _sequences(model.sample([1, 72], params, 2))

    assert _max_diff(live, weights_of(model)) == 0.0
    assert _sequences(model.sample([1, 72], params, 2)) == before
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    reference = HFEngine(plain, model.tokenizer).generate(
        [[1, 72]], n=2, max_new_tokens=6, temperature=1.0, seed=5, stop_ids=[]
    )
    expected = [
        (tokens, logprobs.tolist())
        for tokens, logprobs in zip(reference.response_ids, reference.rollout_logprobs, strict=True)
    ]
    assert saved == expected
    assert saved != before  # the saved weights are not the live ones: the checks above can fail


def test_stop_token_ids_end_a_sequence():
    model = resident()
    free = model.sample([1, 72], SamplingParams(max_tokens=6, seed=5, stop=[]), 1).sequences[0]
    stop_at = free.tokens[2]
    first_hit = free.tokens.index(stop_at)
    stopped = model.sample([1, 72], SamplingParams(max_tokens=6, seed=5, stop=[stop_at]), 1)
    seq = stopped.sequences[0]
    assert seq.tokens == free.tokens[: first_hit + 1] and seq.stop_reason == "stop"


def test_stop_strings_cut_after_the_completing_token():
    model = resident()
    free = model.sample([1, 72], SamplingParams(max_tokens=6, seed=5, stop=[]), 1).sequences[0]
    text = model.tokenizer.decode(free.tokens[:3])
    stop = text[-1]
    cut = next(k for k in range(1, 7) if stop in model.tokenizer.decode(free.tokens[:k]))
    seq = model.sample([1, 72], SamplingParams(max_tokens=6, seed=5, stop=[stop]), 1).sequences[0]
    assert seq.tokens == free.tokens[:cut] and seq.stop_reason == "stop"


def test_prompt_logprobs_equal_a_forward_pass():
    model = resident()
    prompt = [1, 72, 105, 33, 10]
    result = model.sample(prompt, SamplingParams(max_tokens=1, seed=0), 1, prompt_logprobs=True)
    assert result.prompt_logprobs[0] is None and len(result.prompt_logprobs) == len(prompt)
    datum = Datum(
        prompt[:-1],
        {"target_tokens": np.array(prompt[1:]), "weights": np.ones(4, dtype=np.float32)},
    )
    forward = model.forward([datum], "cross_entropy", None, backward=False).outputs[0]["logprobs"]
    np.testing.assert_allclose(result.prompt_logprobs[1:], forward, atol=1e-6)


def test_sampling_refuses_a_missing_max_tokens():
    with pytest.raises(ValueError, match="max_tokens"):
        resident().sample([1, 72], SamplingParams(), 1)
