"""LoRA runs (`config.lora`): only adapters train, the engine samples the merged policy, the
MiniRL step keeps its laws (micro-batch invariance, exact resume, Routing Replay) and checkpoints
load in plain transformers (merged) and in peft (adapter)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import parity_reward, tiny_config
from transformers import AutoModelForCausalLM

from keel.types.training import TaskItem
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.merged import policy_tensors
from keel_worker.engines.models import load_model
from keel_worker.training.checkpoint import load_checkpoint, load_trainer_state
from keel_worker.training.lora import LoraTargetError, apply_lora
from keel_worker.training.run import train
from keel_worker.training.session import TrainingSession

ITEMS = [TaskItem(prompt=f"What is {a} + 1?", answer=str(a + 1)) for a in range(2)]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _lora_config(model="tiny-moe", **lora):
    return tiny_config(model={"name": model}, lora={"rank": 4, **lora})


def _session(config, tmp_path, cache_dir) -> TrainingSession:
    return TrainingSession.open(config, workdir=tmp_path, cache_dir=cache_dir, resume=False)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_only_adapters_get_gradients_and_optimizer_state(tmp_path, cache_dir):
    run = _session(_lora_config(), tmp_path, cache_dir)
    model, trainer = run.model, run.trainer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # tiny-moe, rank 4, all-linear = the 4 attention projections of 4 layers (hidden 128,
    # 4 query heads and 2 KV heads of 32): q, o: 4·128 + 128·4 = 1024; k, v: 4·128 + 64·4 = 768.
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 4 * 4 * 2
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == 4 * 3584
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with_grad: list[set[str]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: with_grad.append({n for n, p in model.named_parameters() if p.grad is not None})
    )
    trainer.step(ITEMS, parity_reward, seed=3)
    assert with_grad and all(names == trainable for names in with_grad)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for p in trainer.optimizer.state} == trainable
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # the base (routers too) never moves
    assert any(".lora_B." in n for n in changed)  # B starts at zero and learns


def test_all_linear_and_explicit_targets(cache_dir):
    dense = apply_lora(load_model("tiny-dense", cache_dir=cache_dir).model, _lora_config().lora)
    adapted = {
        n.split(".lora_A.")[0].rsplit(".", 1)[1]
        for n, _ in dense.named_parameters()
        if ".lora_A." in n
    }
    assert adapted == {*ATTENTION, "gate_proj", "up_proj", "down_proj"}  # not the LM head
    only_q = apply_lora(
        load_model("tiny-dense", cache_dir=cache_dir).model,
        _lora_config(target_modules=["q_proj"]).lora,
    )
    assert sum(".lora_A." in n for n, _ in only_q.named_parameters()) == 4  # one per layer


@pytest.mark.parametrize(
    ("model", "targets", "message"),
    [
        ("tiny-moe", ["gate"], "router"),
        ("tiny-dense", ["lm_head"], "LM head"),
        ("tiny-dense", ["nope"], "q_proj"),  # names the model's linear modules
    ],
)
def test_targets_keel_does_not_adapt_are_clear_errors(cache_dir, model, targets, message):
    base = load_model(model, cache_dir=cache_dir).model
    with pytest.raises(LoraTargetError, match=message):
        apply_lora(base, _lora_config(target_modules=targets).lora)


def test_micro_batching_does_not_change_the_lora_gradient(tmp_path, cache_dir):
    grads = {}
    for size in (1, 8):
        config = tiny_config(lora={"rank": 4}, num_minibatches=1, micro_batch_size=size)
        run = _session(config, tmp_path / str(size), cache_dir)

        def keep(*_, size=size, model=run.model):
            grads[size] = {
                n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
            }

        run.trainer.optimizer.register_step_pre_hook(keep)
        run.trainer.step(ITEMS, parity_reward, seed=3)
    assert grads[1].keys() == grads[8].keys() and len(grads[8]) == 32
    assert any(g.abs().sum() > 0 for g in grads[8].values())
    for name, value in grads[1].items():
        torch.testing.assert_close(value, grads[8][name], rtol=1e-3, atol=1e-6)


def test_engine_samples_the_merged_policy_after_a_lora_step(tmp_path, cache_dir):
    """After an update the fp32 engine's μ equals the trainer's π (base + adapter) on the tokens
    it sampled; an engine left on the base weights would not."""
    run = _session(_lora_config(model="tiny-dense"), tmp_path, cache_dir)
    run.trainer.step(ITEMS, parity_reward, seed=1)
    prompt = encode_prompt(run.tokenizer, ITEMS[0].prompt)
    batch = run.engine.generate([prompt], n=4, max_new_tokens=8, temperature=1.0, seed=2)
    base = load_model("tiny-dense", cache_dir=cache_dir).model
    worst = {"policy": 0.0, "base": 0.0}
    for response, mu_T in zip(batch.response_ids, batch.rollout_logprobs, strict=True):
        ids = torch.tensor([prompt + response])
        for key, model in (("policy", run.model), ("base", base)):
            logits_T_V = _logits(model, ids)[0, len(prompt) - 1 : -1]
            pi_T = torch.log_softmax(logits_T_V, -1).gather(1, ids[0, len(prompt) :, None])[:, 0]
            worst[key] = max(worst[key], float((pi_T - mu_T).abs().max()))
    assert worst["policy"] < 1e-5
    assert worst["base"] > 1e-3  # the adapter moved the policy: the check above can fail


def test_low_precision_engine_rounds_the_merged_weights(tmp_path, cache_dir):
    run = _session(
        tiny_config(model={"name": "tiny-dense"}, lora={"rank": 4}, rollout={"precision": "bf16"}),
        tmp_path,
        cache_dir,
    )
    run.trainer.step(ITEMS, parity_reward, seed=1)
    merged = dict(policy_tensors(run.model))
    name = "model.layers.0.self_attn.q_proj.weight"
    lora = run.model.get_base_model().model.layers[0].self_attn.q_proj
    delta = lora.lora_B["default"].weight @ lora.lora_A["default"].weight * (32.0 / 4)
    torch.testing.assert_close(merged[name], lora.base_layer.weight + delta, rtol=0, atol=1e-6)
    engine_weight = dict(run.engine.model.named_parameters())[name]
    assert torch.equal(engine_weight, merged[name].to(torch.bfloat16))
    assert not torch.equal(engine_weight, lora.base_layer.weight.to(torch.bfloat16))


def test_lora_dropout_only_in_the_gradient_forwards(tmp_path, cache_dir):
    """Dropout changes the update, never π_old: with an fp32 engine μ_old = π_old still holds."""
    grads, metrics = {}, {}
    for p in (0.0, 0.5):
        config = tiny_config(model={"name": "tiny-dense"}, lora={"rank": 4, "dropout": p})
        run = _session(config, tmp_path / str(p), cache_dir)

        def keep(*_, p=p, model=run.model):
            grads.setdefault(
                p, {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
            )

        run.trainer.optimizer.register_step_pre_hook(keep)
        torch.manual_seed(0)
        metrics[p] = run.trainer.step(ITEMS, parity_reward, seed=3)
    differs = [n for n in grads[0.0] if not torch.allclose(grads[0.0][n], grads[0.5][n])]
    assert differs
    assert metrics[0.5]["mismatch/kl_k3"] < 1e-9 and metrics[0.5]["mismatch/prob_diff_max"] < 1e-5


def test_lora_resume_equals_an_uninterrupted_run(tmp_path, cache_dir):
    """Stop after step 1, resume to step 2: metrics, adapters and optimizer state are those of
    the straight run (dropout on, so the restored RNG matters too; R2 across 2 mini-batches)."""
    config = tiny_config(lora={"rank": 4, "dropout": 0.1}, routing_replay="R2")
    straight = list(
        train(config, workdir=tmp_path / "a", reward_fn=parity_reward, cache_dir=cache_dir)
    )
    first = list(
        train(
            config,
            workdir=tmp_path / "b",
            reward_fn=parity_reward,
            cache_dir=cache_dir,
            should_stop=lambda: True,
        )
    )
    assert [r.step for r in first] == [1]
    resumed = list(
        train(config, workdir=tmp_path / "b", reward_fn=parity_reward, cache_dir=cache_dir)
    )
    assert [r.step for r in resumed] == [2]
    a, b = straight[-1].metrics, resumed[-1].metrics
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("time/"):
            assert a[key] == b[key], key
    state_a = load_trainer_state(straight[-1].checkpoint)
    state_b = load_trainer_state(resumed[-1].checkpoint)
    assert state_a.adapter.keys() == state_b.adapter.keys() and len(state_a.adapter) == 32
    for name, value in state_a.adapter.items():
        assert torch.equal(value, state_b.adapter[name]), name
    moments_a = state_a.optimizer["state"]
    assert len(moments_a) == 32
    for index, moments in moments_a.items():
        assert torch.equal(moments["exp_avg"], state_b.optimizer["state"][index]["exp_avg"])
    merged_a = load_file(straight[-1].checkpoint / "model.safetensors")
    merged_b = load_file(resumed[-1].checkpoint / "model.safetensors")
    assert all(torch.equal(merged_a[k], merged_b[k]) for k in merged_a)


@pytest.mark.parametrize("replay", ["R2", "R3"])
def test_routing_replay_runs_under_the_peft_wrapper(tmp_path, cache_dir, replay):
    run = _session(tiny_config(lora={"rank": 4}, routing_replay=replay), tmp_path, cache_dir)
    routers = run.trainer.replay.routers
    assert len(routers) == 4 and not any(p.requires_grad for r in routers for p in r.parameters())
    before = [r.weight.detach().clone() for r in routers]
    metrics = run.trainer.step(ITEMS, parity_reward, seed=7)
    # Mini-batch 2 sees routes that moved with the adapters although the routers are frozen.
    assert metrics["routing/old_vs_current_any"] > 0
    assert metrics["routing/infer_vs_train_any"] == 0.0  # fp32 engine: same merged policy
    assert all(torch.equal(r.weight, w) for r, w in zip(routers, before, strict=True))


def test_r3_lowers_the_training_inference_kl_under_fp8_with_lora(tmp_path, cache_dir):
    kl = {}
    for mode in ("none", "R3"):
        config = tiny_config(
            lora={"rank": 4},
            routing_replay=mode,
            prompts_per_step=4,
            group_size=4,
            rollout={"precision": "fp8", "max_new_tokens": 16},
        )
        metrics = _session(config, tmp_path / mode, cache_dir).trainer.step(
            ITEMS * 2, parity_reward, seed=5
        )
        kl[mode] = metrics["mismatch/kl_k3"]
        if mode == "none":
            assert metrics["routing/infer_vs_train_any"] > 0
    assert kl["R3"] < kl["none"]


def test_checkpoint_loads_merged_in_transformers_and_the_adapter_in_peft(tmp_path, cache_dir):
    from peft import PeftModel

    run = _session(_lora_config(), tmp_path, cache_dir)
    run.trainer.step(ITEMS, parity_reward, seed=1)
    path, _ = run.save(1, data_cursor=2, rng={}, summary={})
    ids = torch.tensor([encode_prompt(run.tokenizer, "What is 5 + 1?")])
    expected = _logits(run.model, ids)

    merged = AutoModelForCausalLM.from_pretrained(path)  # plain transformers, no peft
    assert not any("lora" in k for k in load_file(path / "model.safetensors"))
    torch.testing.assert_close(_logits(merged, ids), expected, rtol=0, atol=1e-5)

    base = load_model("tiny-moe", cache_dir=cache_dir).model
    assert (_logits(base, ids) - expected).abs().max() > 1e-3  # the adapter did move the policy
    adapter = PeftModel.from_pretrained(base, path / "adapter")
    assert torch.equal(_logits(adapter, ids), expected)  # same modules, same arithmetic

    model, _, state = load_checkpoint(path)
    assert state.adapter is not None and len(state.adapter) == 32
    torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=1e-5)


def test_a_checkpoint_of_the_other_kind_of_run_is_refused(tmp_path, cache_dir):
    full = tiny_config(model={"name": "tiny-dense"}, steps=1, num_minibatches=1)
    list(train(full, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir))
    lora = full.model_copy(update={"lora": _lora_config().lora, "steps": 2})
    with pytest.raises(ValueError, match="full fine-tuning run"):
        list(train(lora, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir))
