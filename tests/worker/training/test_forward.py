"""`PolicyForward` runs each distinct prompt of a micro-batch once and continues every response
from its KV cache: the logprobs and gradients equal one full forward per response."""

from __future__ import annotations

import pytest
import torch

from keel_worker.engines.models import load_model
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import PolicyForward, shared_prompts

# Two prompts of different lengths (the shorter is left-padded), three and two responses of
# different lengths, one of them a single token (nothing fed after the prompt) and one empty.
PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13]]
ROWS = [(0, [20, 21, 22, 23]), (0, [24]), (1, [25, 26]), (0, [27, 28, 29]), (1, [])]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model("tiny-dense", cache_dir=tmp_path_factory.mktemp("cache")).model


def _micro_batch(rows: list[int]):
    return make_micro_batch(
        rows,
        prompt_ids=[PROMPTS[p] for p, _ in ROWS],
        response_ids=[r for _, r in ROWS],
        rollout_logprobs=[torch.zeros(len(r)) for _, r in ROWS],
        advantages_PG=torch.zeros(len(ROWS)),
        routes=None,
        pad_id=0,
    )


def _logprobs_and_grads(model, forward, rows):
    model.zero_grad(set_to_none=True)
    out = forward(_micro_batch(rows))
    weights_B_T = torch.arange(1.0, 1.0 + out.logprobs_B_T.numel()).reshape(out.logprobs_B_T.shape)
    (out.logprobs_B_T * weights_B_T / 10).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logprobs_B_T.detach(), grads


def test_shared_prompt_forward_equals_one_forward_per_response(model):
    forward = PolicyForward(model, temperature=0.7, bf16=False, replay=None)
    rows = list(range(len(ROWS)))
    prompts, prompt_of_B, n_prompt_B = shared_prompts(_micro_batch(rows))
    assert prompts == PROMPTS and prompt_of_B.tolist() == [0, 0, 1, 0, 1]
    assert n_prompt_B.tolist() == [5, 5, 3, 5, 3]
    shared, shared_grads = _logprobs_and_grads(model, forward, rows)

    # Reference: each response alone (a one-row micro-batch shares nothing: the plain forward),
    # with the same per-token weights, so the summed gradients must agree.
    assert shared_prompts(_micro_batch([0])) is None
    reference = torch.zeros_like(shared)
    reference_grads: dict[str, torch.Tensor] = {}
    width = shared.shape[1]
    for i in rows:
        model.zero_grad(set_to_none=True)
        out = forward(_micro_batch([i]))
        n = out.logprobs_B_T.shape[1]
        weights = torch.arange(1.0 + i * width, 1.0 + i * width + n)[None]
        (out.logprobs_B_T * weights / 10).sum().backward()
        reference[i, :n] = out.logprobs_B_T.detach()[0]
        for name, p in model.named_parameters():
            if p.grad is not None:
                reference_grads[name] = reference_grads.get(name, 0) + p.grad
    torch.testing.assert_close(shared, reference, rtol=0, atol=2e-6)
    assert (shared[[0, 1, 2, 3]] != 0).any(dim=1).all() and (shared[4] == 0).all()
    assert set(shared_grads) == set(reference_grads)
    # Float reassociation only: the summed per-response gradients differ from the shared ones by
    # about 1e-6 of their norm (the tied embedding, a sum over every token, the most).
    for name, grad in shared_grads.items():
        gap = (grad - reference_grads[name]).norm() / reference_grads[name].norm()
        assert gap < 1e-5, (name, gap.item())
    model.zero_grad(set_to_none=True)
