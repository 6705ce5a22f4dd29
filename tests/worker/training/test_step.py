"""The training step on tiny models: replay modes, exact normalization, metrics, resume."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import parity_reward, tiny_config

from keel.types.training import TaskItem
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model
from keel_worker.training.checkpoint import load_checkpoint
from keel_worker.training.run import train
from keel_worker.training.step import Trainer

ITEMS = [TaskItem(prompt=f"What is {a} + 1?", answer=str(a + 1)) for a in range(2)]


def _trainer(config, cache_dir):
    loaded = load_model(config.model.name, cache_dir=cache_dir)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision=config.rollout.precision)
    trainer = Trainer(config, loaded.model, loaded.tokenizer, engine, is_moe=loaded.is_moe)
    return trainer, loaded.model


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _after_each_update(trainer):
    """Snapshots of the weights after every optimizer step."""
    snapshots = []
    trainer.optimizer.register_step_post_hook(lambda *_: snapshots.append(_params(trainer.model)))
    return snapshots


@pytest.mark.parametrize("replay", ["R2", "R3"])
def test_two_steps_on_tiny_moe(tmp_path, cache_dir, replay):
    config = tiny_config(routing_replay=replay, eval_every=1, eval_size=4)
    initial = _params(load_model("tiny-moe", cache_dir=cache_dir).model)
    results = list(train(config, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir))

    assert [r.step for r in results] == [1, 2]
    assert [r.policy_version for r in results] == [1, 2]
    metrics = results[-1].metrics
    for key in (
        "reward/mean",
        "response/length_mean",
        "response/length_max",
        "response/truncation_rate",
        "optim/grad_norm",
        "optim/lr",
        "optim/loss",
        "train/entropy",
        "time/generate_s",
        "time/recompute_s",
        "time/update_s",
        "time/sync_s",
        "routing/infer_vs_train_any",
        "routing/infer_vs_train_L0",
        "routing/infer_vs_train_L3",
        "routing/old_vs_current_any",
        "eval/accuracy",
        "eval/accuracy_final",
    ):
        assert key in metrics, key
        assert math.isfinite(metrics[key]), key
    assert any(k.startswith("mismatch/") for k in metrics)
    assert metrics["optim/grad_norm"] > 0
    final, _, state = load_checkpoint(results[-1].checkpoint)
    moved = [n for n, p in final.named_parameters() if not torch.equal(p, initial[n])]
    assert "model.layers.0.mlp.gate.weight" in moved  # the router learns under replay
    assert len(moved) > len(initial) // 2
    assert state.step == 2 and state.data_cursor == 4


def test_r2_first_minibatch_equals_no_replay(cache_dir):
    """docs/concepts/algorithm.md §2.3: in mini-batch 1 the replayed routes are the natural ones."""
    snaps = {}
    for mode in ("none", "R2"):
        trainer, _ = _trainer(tiny_config(routing_replay=mode), cache_dir)
        snaps[mode] = _after_each_update(trainer)
        metrics = trainer.step(ITEMS, parity_reward, seed=7)
    first_none, first_r2 = snaps["none"][0], snaps["R2"][0]
    assert all(torch.equal(first_none[n], first_r2[n]) for n in first_none)
    # Mini-batch 2 replays the π_old routes where the updated router would choose others.
    assert metrics["routing/old_vs_current_any"] > 0
    second_none, second_r2 = snaps["none"][1], snaps["R2"][1]
    assert any(not torch.equal(second_none[n], second_r2[n]) for n in second_none)


def test_micro_batching_does_not_change_the_gradient(cache_dir):
    """The global normalizer makes accumulated micro-batch gradients equal the full batch's."""
    grads = {}
    for size in (1, 8):
        trainer, model = _trainer(tiny_config(num_minibatches=1, micro_batch_size=size), cache_dir)

        def keep_grads(*_, size=size, model=model):
            grads[size] = {n: p.grad.clone() for n, p in model.named_parameters()}

        trainer.optimizer.register_step_pre_hook(keep_grads)
        trainer.step(ITEMS, parity_reward, seed=3)
    assert any(g.abs().sum() > 0 for g in grads[8].values())
    for name, value in grads[1].items():
        torch.testing.assert_close(value, grads[8][name], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model", ["tiny-dense", "tiny-moe"])
def test_fp32_engine_matches_the_trainer(cache_dir, model):
    """With fp32 on both sides μ_old = π_old up to float noise: the mismatch is ~0."""
    trainer, _ = _trainer(tiny_config(model={"name": model}), cache_dir)
    metrics = trainer.step(ITEMS, parity_reward, seed=1)
    assert abs(metrics["mismatch/kl_k1"]) < 1e-5
    assert metrics["mismatch/kl_k3"] < 1e-9
    assert metrics["mismatch/prob_diff_max"] < 1e-5
    if model == "tiny-moe":
        assert metrics["routing/infer_vs_train_any"] == 0.0


def test_r3_lowers_the_training_inference_kl_under_fp8(cache_dir):
    kl = {}
    for mode in ("none", "R3"):
        config = tiny_config(
            routing_replay=mode,
            rollout={"precision": "fp8", "max_new_tokens": 16},
            prompts_per_step=4,
            group_size=4,
        )
        trainer, _ = _trainer(config, cache_dir)
        metrics = trainer.step(ITEMS * 2, parity_reward, seed=5)
        kl[mode] = metrics["mismatch/kl_k3"]
        if mode == "none":
            assert metrics["routing/infer_vs_train_any"] > 0  # fp8 flips some routes
    assert kl["R3"] < kl["none"]


def test_missing_rewards_drop_the_whole_group(cache_dir):
    trainer, _ = _trainer(tiny_config(), cache_dir)

    def first_group_unscored(rollouts):
        return [None if r.group_index == 0 else parity_reward([r])[0] for r in rollouts]

    metrics = trainer.step(ITEMS, first_group_unscored, seed=2)
    assert metrics["groups/dropped"] == 1.0
    assert metrics["reward/missing"] == 4.0
    assert trainer.policy_version == 1


def _rewards_of(table):
    """A scorer returning table[group][sample] (None = the reward never arrived)."""
    return lambda rollouts: [table[r.group_index][r.sample_index] for r in rollouts]


def test_partial_groups_keep_their_rewarded_members_and_baseline_from_them(cache_dir):
    # Group 0 = [1, 0, 1, missing], group 1 = [0, 0, 0, 0] (zero variance).
    # Baseline from the three rewarded members: mean 2/3, advantages [1/3, −2/3, 1/3];
    # abs mean over the 7 kept responses = (4/3) / 7 = 4/21. Scoring the missing one as 0
    # would give [.5, −.5, .5, −.5] and 2/8 instead; dropping the group, 0.
    trainer, _ = _trainer(tiny_config(), cache_dir)
    table = [[1.0, 0.0, 1.0, None], [0.0, 0.0, 0.0, 0.0]]
    metrics = trainer.step(ITEMS, _rewards_of(table), seed=2, drop_incomplete_groups=False)
    assert (metrics["groups/partial"], metrics["groups/dropped"]) == (1.0, 0.0)
    assert metrics["reward/missing"] == 1.0
    assert metrics["advantage/abs_mean"] == pytest.approx(4 / 21, rel=1e-6)
    assert metrics["advantage/zero_variance_frac"] == 0.5
    assert metrics["optim/grad_norm"] > 0 and trainer.policy_version == 1


def test_fewer_kept_responses_than_mini_batches_still_update(cache_dir):
    # 2 prompts × 2 responses in N = 4 mini-batches; one group dropped leaves 2 responses, so
    # two of the four mini-batches are empty: they are skipped, the kept ones still update.
    trainer, _ = _trainer(
        tiny_config(group_size=2, num_minibatches=4, micro_batch_size=1), cache_dir
    )
    metrics = trainer.step(ITEMS, _rewards_of([[None, 1.0], [1.0, 0.0]]), seed=2)
    assert metrics["groups/dropped"] == 1.0
    assert metrics["optim/grad_norm"] > 0 and trainer.policy_version == 1


def test_a_partial_group_with_one_reward_left_is_dropped(cache_dir):
    # One rewarded member has no group baseline to compare with: the group is dropped.
    trainer, _ = _trainer(tiny_config(), cache_dir)
    table = [[1.0, None, None, None], [1.0, 0.0, 1.0, 0.0]]
    metrics = trainer.step(ITEMS, _rewards_of(table), seed=2, drop_incomplete_groups=False)
    assert (metrics["groups/partial"], metrics["groups/dropped"]) == (0.0, 1.0)
    assert metrics["advantage/abs_mean"] == pytest.approx(0.5)


def test_resume_reproduces_the_next_step(tmp_path, cache_dir):
    config = tiny_config(checkpoint_every=1)
    straight = list(
        train(config, workdir=tmp_path / "a", reward_fn=parity_reward, cache_dir=cache_dir)
    )
    first = tiny_config(checkpoint_every=1, steps=1)
    list(train(first, workdir=tmp_path / "b", reward_fn=parity_reward, cache_dir=cache_dir))
    resumed = list(
        train(config, workdir=tmp_path / "b", reward_fn=parity_reward, cache_dir=cache_dir)
    )
    assert [r.step for r in resumed] == [2]
    a, b = straight[-1].metrics, resumed[-1].metrics
    for key in a:
        if not key.startswith("time/"):
            assert a[key] == b[key], key
    model_a, _, state_a = load_checkpoint(straight[-1].checkpoint)
    model_b, _, state_b = load_checkpoint(resumed[-1].checkpoint)
    assert state_a.data_cursor == state_b.data_cursor
    # `auto`'s decision (taken at step 1, before the interruption) survives the resume.
    assert state_b.routing_replay == state_a.routing_replay
    assert state_b.routing_replay["decision"]["step"] == 1
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_task_rewards_are_used_by_default(tmp_path, cache_dir):
    # A dataset task scored by exact match. Run 1 (any reward_fn) records what the untrained
    # model answers; run 2, seeded the same and given no reward_fn, gets each prompt's first
    # answer as its reference, so the default scorer must give 1 to every completion equal to
    # it and 0 to the others (an always-zero scorer fails; so does one that ignores the task).
    prompts = [f"What is {a} + 1?" for a in range(5)]

    def dataset(answers):
        items = [{"prompt": p, "answer": answers.get(p, "?")} for p in prompts]
        return {"name": "dataset", "items": items, "verifier": "exact_match"}

    def config(answers):
        return tiny_config(
            model={"name": "tiny-dense"}, steps=1, num_minibatches=1, task=dataset(answers)
        )

    seen = []

    def recording(rollouts):
        seen.extend(rollouts)
        return [0.0] * len(rollouts)

    list(train(config({}), workdir=tmp_path / "a", reward_fn=recording, cache_dir=cache_dir))
    first = {r.item.prompt: r.completion for r in seen if r.sample_index == 0}
    (result,) = train(config(first), workdir=tmp_path / "b", cache_dir=cache_dir)
    expected = [r.completion.strip() == first[r.item.prompt].strip() for r in seen]
    assert result.metrics["reward/mean"] == pytest.approx(sum(expected) / len(expected))
    assert result.metrics["reward/mean"] >= 1 / 4  # at least each group's first answer


def test_should_stop_checkpoints_and_ends_the_run(tmp_path, cache_dir):
    config = tiny_config(model={"name": "tiny-dense"}, steps=5, num_minibatches=1)
    results = list(
        train(
            config,
            workdir=tmp_path,
            reward_fn=parity_reward,
            cache_dir=cache_dir,
            should_stop=lambda: True,
        )
    )
    assert [r.step for r in results] == [1]
    assert results[0].checkpoint is not None
    resumed = list(
        train(
            config.model_copy(update={"steps": 2}),
            workdir=tmp_path,
            reward_fn=parity_reward,
            cache_dir=cache_dir,
        )
    )
    assert [r.step for r in resumed] == [2]


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_dppo_objectives_train_with_their_mask_metrics(cache_dir, name):
    """The wire name reaches the step: DPPO's μ-anchored mask statistics come back, finite."""
    config = tiny_config(
        model={"name": "tiny-dense"}, algorithm={"name": name}, rollout={"precision": "fp8"}
    )
    trainer, _ = _trainer(config, cache_dir)
    metrics = trainer.step(ITEMS, parity_reward, seed=4)
    for key in ("clip/frac", "clip/tv_mean", "clip/binary_kl_mean", "is/truncated_frac"):
        assert key in metrics, key
        assert math.isfinite(metrics[key]), key
    assert metrics["clip/tv_mean"] > 0  # fp8 rollout: π_θ ≠ μ_old from the first update on
    assert metrics["optim/grad_norm"] > 0


def test_a_non_finite_gradient_never_reaches_the_optimizer(cache_dir):
    # A NaN gradient on one weight in the first of 2 mini-batches: that update is skipped
    # (weights and AdamW state untouched, counted once), the second one runs as usual.
    trainer, model = _trainer(tiny_config(), cache_dir)
    weight = model.get_output_embeddings().weight
    calls = []

    def poison_first(grad):
        calls.append(1)
        return grad * math.nan if len(calls) == 1 else grad

    weight.register_hook(poison_first)
    before = _params(model)
    snapshots = _after_each_update(trainer)
    metrics = trainer.step(ITEMS, parity_reward, seed=2)
    assert metrics["guard/skipped_updates"] == 1.0
    assert math.isnan(metrics["optim/grad_norm"])  # the mean of a NaN and a finite norm
    assert len(snapshots) == 1  # one AdamW step ran: the second mini-batch's
    after = _params(model)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_finite_steps_count_no_skipped_update(cache_dir):
    trainer, _ = _trainer(tiny_config(), cache_dir)
    metrics = trainer.step(ITEMS, parity_reward, seed=2)
    assert metrics["guard/skipped_updates"] == 0.0


def test_train_rolls_back_then_pauses_when_the_attempts_are_used_up(tmp_path, cache_dir):
    # At lr 1e-2 the second mini-batch's ratios leave the clip range on every step, so a clip
    # trigger at any clipped token fires at step 1. Clip judges the step's own update, so the
    # step-0 weights are good: step 1 rolls back to them (lr 1e-2 -> 5e-3, the batch skipped),
    # fires again, finds its one attempt used and pauses with a checkpoint.
    config = tiny_config(
        model={"name": "tiny-dense"},
        steps=3,
        guard={
            "clip": {"max_frac": 1e-6, "patience": 1, "action": "rollback"},
            "rollback": {"max_attempts": 1, "lr_scale": 0.5},
        },
    )
    results = list(train(config, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir))
    assert [(r.step, [(f.trigger, f.action) for f in r.guard]) for r in results] == [
        (1, [("clip", "rollback")]),
        (1, [("clip", "rollback")]),
    ]
    assert [r.metrics["optim/lr"] for r in results] == [1e-2, 5e-3]
    assert [r.policy_version for r in results] == [1, 1]  # restored to 0, then one step
    assert results[0].checkpoint is None and results[1].checkpoint is not None
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert saved == ["step_000000", "step_000001"]


def test_a_policy_signal_at_step_1_has_no_good_weights_to_roll_back_to(tmp_path, cache_dir):
    # A TIS cap of 0.5 truncates every fp32 token (ρ = 1): the IS fraction breaches at step 1,
    # on the rollouts of the starting weights themselves, so no checkpoint predates the breach
    # and the run pauses at once instead of restoring the weights that breached.
    config = tiny_config(
        model={"name": "tiny-dense"},
        steps=3,
        num_minibatches=1,
        algorithm={"name": "minirl", "is_correction": {"mode": "token_truncate", "cap": 0.5}},
        guard={"is_fraction": {"max_frac": 0.5, "patience": 1, "action": "rollback"}},
    )
    results = list(train(config, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir))
    assert [(r.step, [f.last_good_step for f in r.guard]) for r in results] == [(1, [-1])]
    assert results[0].metrics["optim/lr"] == 1e-2 and results[0].checkpoint is not None
