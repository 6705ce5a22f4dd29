"""Checkpoints of a data-parallel run: sharded for resume, consolidated for the downloads.

A checkpoint directory keeps the single-process layout (training/checkpoint.py), so every reader
of it (the download kinds, vLLM, `load_policy`) is unchanged, and adds one folder:

    sharded/    torch.distributed.checkpoint (DCP) of {"model", "optim"}, one file per rank
                plus the metadata DCP reshards from

The top-level Hugging Face weights are the full state dict gathered to rank 0
(`get_model_state_dict(full_state_dict=True)`), the trainer state is rank 0's with an empty
`optimizer` (the optimizer lives in `sharded/`). Resuming on any number of ranks works: DCP
reshards the saved shards onto the loading run's mesh, and a single process (no process group)
loads them whole; a single-process checkpoint resumed on k ranks has no `sharded/` and its full
optimizer state is scattered onto the shards instead.

The write stays atomic: rank 0 makes the hidden temporary folder and tells the others, every rank
writes its shard there, rank 0 adds the rest and renames it into place after a barrier.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from keel_worker.distributed.group import DataParallel

SHARDED_DIR = "sharded"
_FSDP_PREFIX = "FSDP"  # fully_shard renames a module's class FSDP<Name>


def has_sharded_state(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR / ".metadata").is_file()


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shard of the model and optimizer under `path/sharded` (collective)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(path) / SHARDED_DIR))


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load `path/sharded` into `model` and `optimizer`, resharded for this run: collective on k
    ranks, local in a single process."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(Path(path) / SHARDED_DIR), no_dist=not dist.is_initialized())
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def load_full_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, full: dict[str, Any]
) -> None:
    """Scatter a single-process optimizer `state_dict()` (keyed by parameter index, the
    unsharded model's order) onto a sharded run's optimizer (collective)."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    by_name = {
        "state": {names[i]: value for i, value in full["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in full["param_groups"]
        ],
    }
    set_state_dict(
        model,
        optimizer,
        model_state_dict={},
        optim_state_dict=by_name,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model on rank 0's CPU (empty on the others); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def agree_on_folder(dp: DataParallel, folder: Path | None) -> Path:
    """Rank 0's `folder` on every rank (collective)."""
    box = [str(folder) if dp.is_writer else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def save_hf_weights(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Write `state` (the full state dict) as a plain Hugging Face directory of `model`'s
    architecture (rank 0): tied weights once, as the model itself saves them."""
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first_name.setdefault(id(param), name)
    tied = {
        name
        for name, param in model.named_parameters(remove_duplicate=False)
        if first_name[id(param)] != name
    }
    state = {name: value for name, value in state.items() if name not in tied}
    model.save_pretrained(directory, state_dict=state)
    config_file = Path(directory) / "config.json"
    config = json.loads(config_file.read_text())
    config["architectures"] = [
        a[len(_FSDP_PREFIX) :] if a.startswith(_FSDP_PREFIX) else a
        for a in config.get("architectures") or []
    ]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_distributed_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    state: Any,
    summary: dict[str, Any],
    dp: DataParallel,
) -> Path:
    """Write a checkpoint of a sharded run to `path` atomically (collective; see the module
    docstring). `state` is the run's `TrainerState` with an empty `optimizer`."""
    from keel.types.checkpoints import TRAINER_STATE_FILE
    from keel_worker.training.checkpoint import SUMMARY_FILE

    path = Path(path)
    tmp: Path | None = None
    if dp.is_writer:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = agree_on_folder(dp, tmp)
    try:
        save_sharded(tmp, model, optimizer)
        full = full_model_state(model)
        if dp.is_writer:
            save_hf_weights(model, full, tmp)
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            torch.save(state.__dict__, tmp / TRAINER_STATE_FILE)
            info = {"step": state.step, "policy_version": state.policy_version, **summary}
            (tmp / SUMMARY_FILE).write_text(json.dumps(info, indent=2, default=str))
        dist.barrier()  # every shard and rank 0's files are written
        if dp.is_writer:
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        dist.barrier()  # no rank goes on before the checkpoint is in place
    except BaseException:
        if dp.is_writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
