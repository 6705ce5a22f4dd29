"""Multi-turn sequences in the trainer: context tokens are read, never trained on.

An agent episode's sequence is built here for real: the engine samples turn 1, context tokens
(a tool result) are appended, the engine samples turn 2 from the whole prefix, and the response
is `sampled1 + context + sampled2` with `trained_masks` True at the sampled tokens only.
`Trainer.learn` then trains on it as the agent step will.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from training_helpers import parity_reward, tiny_config

from keel.types.training import TaskItem
from keel_worker.core.diagnostics import mismatch_metrics
from keel_worker.engines.base import RolloutBatch
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model
from keel_worker.engines.routing_replay import RoutingReplayError
from keel_worker.training.batching import make_micro_batch
from keel_worker.training.forward import shared_prompts
from keel_worker.training.metrics import MetricSink
from keel_worker.training.scoring import group_advantages, scored_groups
from keel_worker.training.step import Trainer
from keel_worker.training.step_metrics import rollout_metrics

CONTEXT_TEXT = "\ntool: 42\n"
ADVANTAGES = [1.0, -0.5]
TIS_CAP = 5.0  # MiniRLConfig's default is_correction: token_truncate, cap 5


def _trainer(config, cache_dir):
    loaded = load_model(config.model.name, cache_dir=cache_dir)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision=config.rollout.precision)
    return Trainer(config, loaded.model, loaded.tokenizer, engine, is_moe=loaded.is_moe)


def _sample(trainer, prefix: list[int], seed: int) -> RolloutBatch:
    rollout = trainer.config.rollout
    return trainer.engine.generate(
        [prefix],
        n=1,
        max_new_tokens=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        seed=seed,
    )


def _episodes(trainer, seeds=(11, 12)) -> RolloutBatch:
    """One two-turn sequence per seed, all from the same prompt (a group of the agent step)."""
    tokenizer = trainer.tokenizer
    prompt = encode_prompt(tokenizer, "What is 6 * 7?")
    context = tokenizer(CONTEXT_TEXT, add_special_tokens=False)["input_ids"]
    responses, logprobs, masks, finish, routes = [], [], [], [], []
    for seed in seeds:
        turn1 = _sample(trainer, prompt, seed)
        sampled1 = turn1.response_ids[0]
        turn2 = _sample(trainer, prompt + sampled1 + context, seed + 100)
        sampled2 = turn2.response_ids[0]
        responses.append(sampled1 + context + sampled2)
        # μ at context positions is never read: 0 by convention.
        logprobs.append(
            torch.cat(
                [turn1.rollout_logprobs[0], torch.zeros(len(context)), turn2.rollout_logprobs[0]]
            )
        )
        masks.append(
            torch.tensor([True] * len(sampled1) + [False] * len(context) + [True] * len(sampled2))
        )
        finish.append(turn2.finish_reasons[0])
        # Turn 2's prefill fed the whole prefix: its routes cover the sequence (R3 replays them).
        routes.append(turn2.routes[0] if turn2.routes is not None else None)
    return RolloutBatch(
        prompt_ids=[prompt] * len(seeds),
        response_ids=responses,
        rollout_logprobs=logprobs,
        finish_reasons=finish,
        routes=routes if routes[0] is not None else None,
        prompt_index=[0] * len(seeds),
        trained_masks=masks,
    )


def _learn(trainer, batch, advantages=ADVANTAGES) -> dict[str, float]:
    sink = MetricSink()
    rows = list(range(len(batch)))
    trainer.learn(batch, torch.tensor(advantages), rows, seed=0, sink=sink)
    return trainer.finish_step(sink)


def _logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log π(response_t | prompt, response_<t) from one plain forward of the whole model."""
    input_ids = torch.tensor([prompt + response[:-1]])
    logits_S_V = model(input_ids=input_ids).logits[0].float() / temperature
    scoring_T_V = logits_S_V[len(prompt) - 1 :]
    return torch.log_softmax(scoring_T_V, dim=-1).gather(1, torch.tensor(response)[:, None])[:, 0]


def _steady(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "overrides",
    [{"model": {"name": "tiny-dense"}}, {"model": {"name": "tiny-moe"}, "routing_replay": "R3"}],
    ids=["dense", "moe-R3"],
)
def test_pi_old_matches_mu_on_the_sampled_tokens_of_both_turns(cache_dir, overrides):
    """fp32 on both sides: the trainer's π_old of turn 2's tokens, read after the context in one
    sequence, is the μ the engine recorded when it sampled them from that prefix."""
    trainer = _trainer(tiny_config(num_minibatches=1, **overrides), cache_dir)
    batch = _episodes(trainer)
    assert all(not m.all() and m.any() for m in batch.trained_masks)

    def micro_batch(trained_masks):
        return make_micro_batch(
            [0, 1],
            prompt_ids=batch.prompt_ids,
            response_ids=batch.response_ids,
            rollout_logprobs=batch.rollout_logprobs,
            advantages_PG=torch.zeros(2),
            routes=batch.routes,
            pad_id=trainer.pad_id,
            trained_masks=trained_masks,
        )

    if batch.routes is None:  # dense: the episodes' shared prompt runs once (forward.py)
        prompts, _, _ = shared_prompts(micro_batch(batch.trained_masks))
        assert prompts == [batch.prompt_ids[0]]
    # A direct forward of every response token (the mask widened to all of them).
    mb = micro_batch([torch.ones_like(m) for m in batch.trained_masks])
    with torch.no_grad():
        routes = mb.routes_B_S_L_K if batch.routes is not None else None
        old_B_T = trainer.forward(mb, replay_routes_B_S_L_K=routes).logprobs_B_T
    for i, mask in enumerate(batch.trained_masks):
        n = len(mask)
        torch.testing.assert_close(
            old_B_T[i, :n][mask], batch.rollout_logprobs[i][mask], atol=1e-4, rtol=0
        )
        # Context tokens are not the policy's: their π_old is far from the μ = 0 placeholder,
        # so counting them would show as a large mismatch.
        assert (old_B_T[i, :n][~mask] < -1.0).all()
    every_B_T = mb.mask_B_T
    wide = mismatch_metrics(old_B_T, mb.rollout_logprobs_B_T, every_B_T)
    assert wide["mismatch/prob_diff_max"] > 0.5

    metrics = _learn(trainer, batch)
    assert metrics["mismatch/prob_diff_max"] < 1e-4
    assert abs(metrics["mismatch/kl_k1"]) < 1e-5


def test_learn_refuses_to_replay_without_routes(cache_dir):
    """R3 on a batch the trainer did not sample: no silent update without the engine's routes."""
    trainer = _trainer(tiny_config(routing_replay="R3"), cache_dir)
    batch = dataclasses.replace(_episodes(trainer, seeds=(11,)), routes=None)
    with pytest.raises(RoutingReplayError, match="R3"):
        trainer.learn(batch, torch.ones(1), [0], seed=0, sink=MetricSink())
    assert trainer.policy_version == 0


def _hand_loss(
    model, batch, temperature: float, loss_agg: str, *, terms: str, counts: str
) -> tuple[float, torch.Tensor]:
    """MiniRL on the episodes at θ = θ_old, by the formula (docs/concepts/algorithm.md §3.1):

        ℓ_t = −M_t · sg[w_t] · Â · log π_θ(y_t|·),   w_t = min(π_θ(y_t)/μ(y_t), 5)   (TIS)

    In the first (only) mini-batch θ = θ_old, so r_t = π_θ/π_old = 1 and the clip mask M_t = 1
    for every token. Over the sampled tokens S_i of each episode i (terms = counts = "sampled"):

        seq_mean_token_sum    L = −Σ_i Â_i Σ_{t∈S_i} w_t log π_θ(y_t) / N_resp
        token_mean            L = −Σ_i Â_i Σ_{t∈S_i} w_t log π_θ(y_t) / Σ_i |S_i|
        seq_mean_token_mean   L = −Σ_i (Â_i / |S_i|) Σ_{t∈S_i} w_t log π_θ(y_t) / N_resp

    `terms="all"` sums the ℓ_t of the context tokens too, `counts="all"` counts them in |S_i|:
    the two ways a trainer could leak the context. Returns (L, the flat gradient of L).
    """
    model.zero_grad(set_to_none=True)
    sums, lengths = [], []
    for i, mask in enumerate(batch.trained_masks):
        summed = torch.ones_like(mask) if terms == "all" else mask
        lp_T = _logprobs(model, batch.prompt_ids[i], batch.response_ids[i], temperature)[summed]
        w_T = torch.exp(lp_T.detach() - batch.rollout_logprobs[i][summed]).clamp(max=TIS_CAP)
        sums.append(-ADVANTAGES[i] * (w_T * lp_T).sum())
        lengths.append(len(mask) if counts == "all" else int(mask.sum()))
    if loss_agg == "seq_mean_token_sum":
        loss = sum(sums) / len(sums)
    elif loss_agg == "token_mean":
        loss = sum(sums) / sum(lengths)
    else:
        assert loss_agg == "seq_mean_token_mean"
        loss = sum(s / n for s, n in zip(sums, lengths, strict=True)) / len(sums)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss_agg", ["seq_mean_token_sum", "token_mean", "seq_mean_token_mean"])
def test_loss_and_gradient_come_from_the_sampled_tokens_only(cache_dir, loss_agg):
    """The objective's loss and the accumulated gradient equal the hand-computed MiniRL of the
    sampled tokens, and differ from what either leak of the context would give: its tokens in
    the sum, or in the normalizer (token_mean's token count, seq_mean_token_mean's |y_i|)."""
    config = tiny_config(
        model={"name": "tiny-dense"},
        num_minibatches=1,
        algorithm={"name": "minirl", "loss_agg": loss_agg},
    )
    trainer = _trainer(config, cache_dir)
    batch = _episodes(trainer)
    reference = copy.deepcopy(trainer.model)
    temperature = config.rollout.temperature
    # μ at the context positions := their π_old (w_t = 1 there), so a trainer that trained the
    # context would weigh it fully.
    with torch.no_grad():
        batch.rollout_logprobs = [
            torch.where(mask, mu, _logprobs(reference, prompt, response, temperature))
            for mu, mask, prompt, response in zip(
                batch.rollout_logprobs,
                batch.trained_masks,
                batch.prompt_ids,
                batch.response_ids,
                strict=True,
            )
        ]
    expected, expected_grad = _hand_loss(
        reference, batch, temperature, loss_agg, terms="sampled", counts="sampled"
    )
    leaks = [("all", "sampled")]
    if loss_agg != "seq_mean_token_sum":  # its normalizer counts responses, no tokens
        leaks.append(("sampled", "all"))

    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
    )
    metrics = _learn(trainer, batch)

    assert metrics["optim/loss"] == pytest.approx(expected, rel=1e-5)  # N = 1: one mini-batch
    assert _relative(grads[0], expected_grad) < 1e-4
    for terms, counts in leaks:
        leaked, leaked_grad = _hand_loss(
            reference, batch, temperature, loss_agg, terms=terms, counts=counts
        )
        assert abs(leaked - expected) > 0.05 * abs(expected), (terms, counts)
        assert _relative(leaked_grad, expected_grad) > 0.05, (terms, counts)


def test_context_logprobs_change_nothing(cache_dir):
    """μ at context positions is a placeholder: any value gives the same metrics and weights."""
    config = tiny_config(model={"name": "tiny-dense"})
    initial = _params(load_model("tiny-dense", cache_dir=cache_dir).model)
    results = []
    for placeholder in (0.0, -7.0):
        trainer = _trainer(config, cache_dir)
        batch = _episodes(trainer)
        batch.rollout_logprobs = [
            torch.where(mask, lp, torch.full_like(lp, placeholder))
            for lp, mask in zip(batch.rollout_logprobs, batch.trained_masks, strict=True)
        ]
        results.append((_steady(_learn(trainer, batch)), _params(trainer.model)))
    (metrics0, weights0), (metrics7, weights7) = results
    assert metrics0 == metrics7
    assert all(torch.equal(weights0[n], weights7[n]) for n in weights0)
    assert any(not torch.equal(weights0[n], initial[n]) for n in weights0)


class _AllSampled:
    """The engine, with every response marked sampled by an explicit all-True mask."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine

    def generate(self, prompt_ids, **kwargs) -> RolloutBatch:
        batch = self.engine.generate(prompt_ids, **kwargs)
        masks = [torch.ones(len(ids), dtype=torch.bool) for ids in batch.response_ids]
        return dataclasses.replace(batch, trained_masks=masks)

    def load_weights(self, model) -> None:
        self.engine.load_weights(model)


def test_an_all_true_mask_is_the_single_turn_step(cache_dir):
    """trained_masks=None and all-True masks: the same metrics and weights, bit for bit."""
    config = tiny_config(routing_replay="R2")
    items = [TaskItem(prompt=f"What is {a} + 1?", answer=str(a + 1)) for a in range(2)]
    results = []
    for explicit in (False, True):
        trainer = _trainer(config, cache_dir)
        if explicit:
            trainer.engine = _AllSampled(trainer.engine)
        metrics = [_steady(trainer.step(items, parity_reward, seed=s)) for s in (1, 2)]
        results.append((metrics, _params(trainer.model)))
    (metrics_none, weights_none), (metrics_all, weights_all) = results
    assert metrics_none == metrics_all
    assert metrics_none[1]["optim/grad_norm"] > 0
    assert all(torch.equal(weights_none[n], weights_all[n]) for n in weights_none)


def test_response_lengths_count_sampled_tokens():
    """response/length_* of sequences with context: 3 + 2 and 4 sampled of 7 and 4 tokens."""
    masks = [
        torch.tensor([True, True, True, False, False, True, True]),
        torch.tensor([True, True, True, True]),
    ]
    batch = RolloutBatch(
        prompt_ids=[[1, 5]] * 2,
        response_ids=[[7] * 7, [8] * 4],
        rollout_logprobs=[torch.zeros(7), torch.zeros(4)],
        finish_reasons=["stop", "length"],
        routes=None,
        prompt_index=[0, 0],
        trained_masks=masks,
    )
    sink = MetricSink()
    rollout_metrics(sink, batch, [1.0, 0.0], scored_groups([1.0, 0.0], 2, keep_partial=False))
    metrics = sink.finish()
    assert metrics["response/length_mean"] == 4.5  # (5 + 4) / 2, not (7 + 4) / 2
    assert metrics["response/length_max"] == 5.0


def test_a_trained_mask_must_match_its_response():
    with pytest.raises(ValueError, match="trained mask"):
        RolloutBatch([[1]], [[5, 6]], [torch.zeros(2)], ["stop"], None, [0], [torch.ones(3) > 0])


def test_group_advantages_by_hand():
    """G = 3, group 0 misses a reward (kept partial: members 0, 1), group 1 complete.

    group_mean: group 1 has mean (2 + 0 + 1) / 3 = 1 → Â = 1, −1, 0; group 0's baseline is its
    rewarded members' mean (1 + 0) / 2 = 0.5 → Â = 0.5, −0.5; the unrewarded member gets 0.
    Complete groups come first in `kept`."""
    rewards = [1.0, 0.0, None, 2.0, 0.0, 1.0]
    groups = scored_groups(rewards, 3, keep_partial=True)
    sink = MetricSink()
    kept, advantages_R = group_advantages(
        rewards, groups, group_size=3, mode="group_mean", sink=sink
    )
    assert kept == [3, 4, 5, 0, 1]
    assert advantages_R.tolist() == [0.5, -0.5, 0.0, 1.0, -1.0, 0.0]
    assert sink.finish()["advantage/abs_mean"] == pytest.approx((0.5 + 0.5 + 1 + 1 + 0) / 5)
    dropped = scored_groups(rewards, 3, keep_partial=False)
    kept, advantages_R = group_advantages(
        rewards, dropped, group_size=3, mode="group_mean", sink=MetricSink()
    )
    assert kept == [3, 4, 5] and advantages_R.tolist() == [0.0, 0.0, 0.0, 1.0, -1.0, 0.0]
