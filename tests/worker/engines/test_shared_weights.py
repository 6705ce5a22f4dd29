"""An fp32 `hf` engine that shares the trainer's weights (`HFEngine(share_weights=True)`): it
aliases exactly where that is exact, follows in-place optimizer steps without a sync, and loads
another model's weights into a private copy without touching the trainer's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel.types.training import LoraConfig
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import LoadedModel, load_model
from keel_worker.training.lora import apply_lora

IDS = torch.tensor([[1, 72, 105, 33, 40, 41]])


def _fresh(tmp_path: Path, name: str = "tiny-dense") -> LoadedModel:
    """A model of its own: these tests update weights, which a shared fixture must not see."""
    return load_model(name, cache_dir=tmp_path)


def _shared_names(engine: HFEngine, model: torch.nn.Module) -> set[str]:
    """Engine parameters whose storage is one of `model`'s tensors."""
    trainer = {p.data_ptr() for p in model.parameters()}
    return {n for n, p in engine.model.named_parameters() if p.data_ptr() in trainer}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _adamw_step(model: torch.nn.Module) -> None:
    """One real optimizer step: next-token loss on IDS, lr large enough to move every logit."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logits = model(IDS[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits[0], IDS[0, 1:])
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
def test_fp32_engine_aliases_every_weight_in_modules_of_its_own(tmp_path, name):
    loaded = _fresh(tmp_path, name)
    engine = HFEngine(loaded.model, loaded.tokenizer, share_weights=True)
    names = {n for n, _ in engine.model.named_parameters()}
    assert _shared_names(engine, loaded.model) == names
    # Its own modules and frozen parameters: hooks and requires_grad never reach the trainer.
    trainer_modules = {id(m) for m in loaded.model.modules()}
    assert not any(id(m) in trainer_modules for m in engine.model.modules())
    assert not any(p.requires_grad for p in engine.model.parameters())
    assert all(p.requires_grad for p in loaded.model.parameters())
    assert torch.equal(_logits(engine.model), _logits(loaded.model))


def test_nothing_is_shared_unless_asked_and_exact(tmp_path):
    loaded = _fresh(tmp_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert _shared_names(HFEngine(model, tokenizer), model) == set()
    # Another precision holds rounded values: they cannot be the trainer's tensors.
    bf16 = HFEngine(model, tokenizer, precision="bf16", bf16_native=False, share_weights=True)
    assert bf16.shares_with is None and _shared_names(bf16, model) == set()
    # A trainer in another dtype: the fp32 engine converts, so it holds its own copy.
    model_bf16 = _fresh(tmp_path).model.to(torch.bfloat16)
    engine = HFEngine(model_bf16, tokenizer, share_weights=True)
    assert _shared_names(engine, model_bf16) == set()
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())


def test_a_lora_policy_shares_its_base_weights_not_its_merged_layers(tmp_path):
    loaded = _fresh(tmp_path)
    policy = apply_lora(loaded.model, LoraConfig(rank=4))
    engine = HFEngine(policy, loaded.tokenizer, share_weights=True)
    shared = _shared_names(engine, policy)
    adapted = {n for n in dict(engine.model.named_parameters()) if n.endswith("q_proj.weight")}
    assert adapted and not adapted & shared  # W + ΔW is the engine's own matrix
    assert "model.embed_tokens.weight" in shared  # the frozen base is the trainer's tensor
    assert torch.equal(_logits(engine.model), _logits(policy))


def test_engine_follows_an_optimizer_step_and_the_sync_copies_nothing(tmp_path):
    loaded = _fresh(tmp_path)
    shared = HFEngine(loaded.model, loaded.tokenizer, share_weights=True)
    copied = HFEngine(loaded.model, loaded.tokenizer)
    before = _logits(loaded.model)
    storage = {n: p.data_ptr() for n, p in shared.model.named_parameters()}

    _adamw_step(loaded.model)

    after = _logits(loaded.model)
    assert not torch.equal(after, before)
    assert torch.equal(_logits(shared.model), after)  # no sync yet: the step reached it in place
    assert torch.equal(_logits(copied.model), before)  # a private copy waits for its sync
    shared.load_weights(loaded.model)
    copied.load_weights(loaded.model)
    assert {n: p.data_ptr() for n, p in shared.model.named_parameters()} == storage
    assert torch.equal(_logits(shared.model), after)
    assert torch.equal(_logits(copied.model), after)


def test_loading_another_model_copies_it_and_the_next_sync_shares_again(tmp_path):
    loaded = _fresh(tmp_path)
    model = loaded.model
    engine = HFEngine(model, loaded.tokenizer, share_weights=True)
    other = _fresh(tmp_path).model
    _adamw_step(other)
    live = {n: p.detach().clone() for n, p in model.named_parameters()}

    engine.load_weights(other)

    for n, p in model.named_parameters():
        assert torch.equal(p, live[n]), n  # bit-identical: nothing was written into them
    assert _shared_names(engine, model) == set()
    assert _shared_names(engine, other) == set()  # a private copy: `other` may go away
    assert torch.equal(_logits(engine.model), _logits(other))
    assert not torch.equal(_logits(engine.model), _logits(model))

    engine.load_weights(model)

    assert _shared_names(engine, model) == {n for n, _ in engine.model.named_parameters()}
    assert torch.equal(_logits(engine.model), _logits(model))
