"""The four download kinds of a checkpoint through the SDK, each loaded the way a user deploys
it: `weights` and `merged` in transformers, `adapter` with `PeftModel.from_pretrained` on the
base, `full` with keel's own resume loader. The checkpoints are written by the worker's own
`save_checkpoint` and registered by its registration path (`register_checkpoint_dir`); the LoRA
one follows the layout LoRA jobs write (merged weights on top, PEFT's output in `adapter/`),
built with peft directly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import keel
from keel import cli
from keel_worker.engines.models import load_model
from keel_worker.jobrunner.checkpoints import register_checkpoint_dir
from keel_worker.training.checkpoint import (
    TrainerState,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)

PROMPT_IDS = torch.tensor([[1, 5, 9, 17, 33, 2]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT_IDS).logits


def _trained_state(model) -> TrainerState:
    """A real AdamW state after one step (exp_avg and exp_avg_sq for every parameter); lr 0
    leaves the weights as they are, so the adapter and the merged weights still agree."""
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    model(PROMPT_IDS).logits.square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    return TrainerState(step=3, policy_version=3, data_cursor=6, optimizer=optimizer.state_dict())


def _base(tmp_path: Path):
    return load_model("tiny-dense", cache_dir=tmp_path / "cache")


def _full_finetune_checkpoint(sessions, job_id: str, tmp_path: Path):
    loaded = _base(tmp_path)
    state = _trained_state(loaded.model)
    path = save_checkpoint(
        checkpoint_dir(tmp_path / "work", 3),
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        state=state,
    )
    ckpt_id = register_checkpoint_dir(sessions, job_id, path, step=3, policy_version=3)
    return ckpt_id, loaded.model


def _lora_checkpoint(sessions, job_id: str, tmp_path: Path):
    from peft import LoraConfig, get_peft_model

    loaded = _base(tmp_path)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )  # random B: the adapter changes the model
    peft_model = get_peft_model(loaded.model, lora)
    peft_model.save_pretrained(tmp_path / "adapter-out")
    merged = peft_model.merge_and_unload()
    path = save_checkpoint(
        checkpoint_dir(tmp_path / "work", 3),
        model=merged,
        tokenizer=loaded.tokenizer,
        state=_trained_state(merged),
    )
    (tmp_path / "adapter-out").rename(path / "adapter")
    ckpt_id = register_checkpoint_dir(sessions, job_id, path, step=3, policy_version=3)
    return ckpt_id, merged


def test_a_full_fine_tune_downloads_as_weights_merged_and_full(
    project_client, sessions, tmp_path, small_config
) -> None:
    client = project_client("alpha")
    job = client.jobs.create(small_config(model={"name": "tiny-dense"}))
    ckpt_id, model = _full_finetune_checkpoint(sessions, job.id, tmp_path)
    expected = _logits(model)

    kinds = client.checkpoints.retrieve(ckpt_id).kinds
    assert sorted(kinds) == ["full", "merged", "weights"]
    assert kinds["merged"] == kinds["weights"]
    # The optimizer state (two fp32 moments per parameter) is what `full` adds.
    assert kinds["full"].size_bytes > 2.5 * kinds["weights"].size_bytes

    weights = client.checkpoints.download(ckpt_id, tmp_path / "weights")  # the default kind
    merged = client.checkpoints.download(ckpt_id, tmp_path / "merged", kind="merged")
    full = client.checkpoints.download(ckpt_id, tmp_path / "full", kind="full")
    assert (weights / "model.safetensors").is_file() and (weights / "config.json").is_file()
    for directory in (weights, merged):
        assert not (directory / "trainer_state.pt").exists()
        assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(directory)), expected)
    resumed, _, state = load_checkpoint(full)
    assert torch.equal(_logits(resumed), expected)
    assert (state.step, state.data_cursor) == (3, 6) and state.optimizer["state"]

    with pytest.raises(keel.ConflictError, match="full fine-tune"):
        client.checkpoints.download(ckpt_id, tmp_path / "adapter", kind="adapter")
    assert not (tmp_path / "adapter").exists()
    bad = client._transport.http.get(
        f"/v1/checkpoints/{ckpt_id}/download",
        params={"kind": "optimizer"},
        headers={"Authorization": f"Bearer {client._transport.config.api_key}"},
    )
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"


def test_a_lora_checkpoint_downloads_its_adapter_for_peft(
    project_client, sessions, tmp_path, small_config
) -> None:
    from peft import PeftModel

    client = project_client("alpha")
    job = client.jobs.create(small_config(model={"name": "tiny-dense"}))
    ckpt_id, merged_model = _lora_checkpoint(sessions, job.id, tmp_path)
    expected, base_logits = _logits(merged_model), _logits(_base(tmp_path).model)
    assert (expected - base_logits).abs().max() > 1e-3  # the adapter does change the model

    kinds = client.checkpoints.retrieve(ckpt_id).kinds
    assert sorted(kinds) == ["adapter", "full", "merged", "weights"]
    adapter = client.checkpoints.download(ckpt_id, tmp_path / "adapter", kind="adapter")
    merged = client.checkpoints.download(ckpt_id, tmp_path / "merged", kind="merged")
    weights = client.checkpoints.download(ckpt_id, tmp_path / "weights")
    full = client.checkpoints.download(ckpt_id, tmp_path / "full", kind="full")

    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    with_adapter = PeftModel.from_pretrained(_base(tmp_path).model, adapter)
    torch.testing.assert_close(_logits(with_adapter), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(merged)), expected)
    assert not (weights / "adapter").exists() and not (weights / "trainer_state.pt").exists()
    assert (full / "adapter" / "adapter_config.json").is_file()
    assert (full / "trainer_state.pt").is_file()
    assert kinds["adapter"].size_bytes < kinds["weights"].size_bytes < kinds["full"].size_bytes


def test_the_cli_lists_every_kind_and_downloads_the_one_asked_for(
    project_client, sessions, tmp_path, small_config, capsys
) -> None:
    client = project_client("alpha")
    job = client.jobs.create(small_config(model={"name": "tiny-dense"}))
    ckpt_id, _ = _full_finetune_checkpoint(sessions, job.id, tmp_path)
    kinds = client.checkpoints.retrieve(ckpt_id).kinds

    assert (
        cli._checkpoints_list(
            client, cli.build_parser().parse_args(["checkpoints", "list", job.id])
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [ckpt_id, "step", "3"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["full", "merged", "weights"]
    assert f"{kinds['full'].size_bytes} B  sha256 {kinds['full'].sha256}" in "\n".join(lines)

    parser = cli.build_parser()
    default = parser.parse_args(["checkpoints", "download", ckpt_id, str(tmp_path / "w")])
    full = parser.parse_args(
        ["checkpoints", "download", ckpt_id, str(tmp_path / "f"), "--kind", "full"]
    )
    assert (default.kind, full.kind) == ("weights", "full")
    with pytest.raises(SystemExit):
        parser.parse_args(["checkpoints", "download", ckpt_id, "x", "--kind", "optimizer"])
    for args in (default, full):
        assert cli._checkpoints_download(client, args) == 0
    assert not (tmp_path / "w" / "trainer_state.pt").exists()
    assert (tmp_path / "f" / "trainer_state.pt").is_file()
