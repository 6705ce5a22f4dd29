from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keel_worker.engines.models import (
    BUILTIN_MODELS,
    ModelNotFoundError,
    is_moe_model,
    load_model,
)
from keel_worker.engines.routing_replay import find_routers
from keel_worker.engines.smollm2 import converted_dir, smollm2_gguf_path


def test_builtin_tiny_models(tiny_dense, tiny_moe) -> None:
    assert BUILTIN_MODELS == ("tiny-dense", "tiny-moe", "tiny-moe-deep", "smollm2-135m-instruct")
    assert not tiny_dense.is_moe and tiny_moe.is_moe
    assert 0.5e6 < sum(p.numel() for p in tiny_dense.model.parameters()) < 3e6
    routers = find_routers(tiny_moe.model)
    assert len(routers) == 4 and routers[0].top_k == 2 and routers[0].num_experts == 8
    # Routers are re-initialized away from zero, or every expert would tie.
    assert all(0.05 < r.weight.std() < 0.2 for r in routers)
    assert tiny_moe.tokenizer.eos_token_id == tiny_moe.model.config.eos_token_id


def test_tiny_builds_are_deterministic_and_take_the_dtype(tmp_path: Path, tiny_moe) -> None:
    again = load_model("tiny-moe", cache_dir=tmp_path)
    for (name, a), (_, b) in zip(
        tiny_moe.model.named_parameters(), again.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    bf16 = load_model("tiny-dense", cache_dir=tmp_path, dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


def test_local_hf_directory_round_trip(tmp_path: Path, tiny_moe) -> None:
    tiny_moe.model.save_pretrained(tmp_path / "ckpt")
    tiny_moe.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"), cache_dir=tmp_path)
    assert loaded.is_moe and loaded.name == "ckpt"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(tiny_moe.model(ids).logits, loaded.model(ids).logits)


def test_errors_name_the_builtins_or_the_missing_file(tmp_path: Path, tiny_dense) -> None:
    builtins = "tiny-dense, tiny-moe, tiny-moe-deep, smollm2-135m-instruct"
    with pytest.raises(ModelNotFoundError, match=builtins):
        load_model("no-such-model", cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"), cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(str(tmp_path / "missing" / "dir"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"), cache_dir=tmp_path)
    assert isinstance(ModelNotFoundError("x"), ValueError)
    assert not is_moe_model(tiny_dense.model)


@pytest.mark.slow
def test_smollm2_is_converted_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    first = load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    cached = converted_dir(smollm2_gguf_path(), tmp_path)
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    # The temporary conversion directory was renamed into place: nothing else is left.
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]
    mtime = (cached / "model.safetensors").stat().st_mtime_ns
    second = load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert (cached / "model.safetensors").stat().st_mtime_ns == mtime
    assert first.model.config.num_hidden_layers == 30 and not first.is_moe
    assert second.tokenizer.pad_token_id == second.tokenizer.eos_token_id == 2
    ids = torch.tensor([[1, 504, 3458, 314]])
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_without_local_paths_a_hub_shaped_folder_is_never_read(
    tmp_path: Path, tiny_moe, monkeypatch
) -> None:
    """The service decides a name is a hub id; the worker must not find it on its disk."""
    tiny_moe.model.save_pretrained(tmp_path / "org" / "name")
    tiny_moe.tokenizer.save_pretrained(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert load_model("org/name", cache_dir=tmp_path).is_moe  # the library reads the folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="hub is disabled"):
        load_model("org/name", cache_dir=tmp_path, local_paths=False)
