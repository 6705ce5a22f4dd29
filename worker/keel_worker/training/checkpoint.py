"""Checkpoints: a Hugging Face directory that transformers (and vLLM) load as-is, plus the
trainer state needed to resume a run exactly, and the retention rule that prunes old ones.

Layout of `<workdir>/checkpoints/step_000010/` (the names are `keel.types.checkpoints`'s, since
the download kinds of `keel_server.platform.storage` are cut along them):
    config.json, generation_config.json, model.safetensors, tokenizer files   (plain HF dir)
    trainer_state.pt    optimizer state, step, policy version, RNG states, data cursor
    keel.json           small human-readable summary (step, policy version, config)
    adapter/            LoRA runs only: peft's `save_pretrained` output (adapter_config.json,
                        adapter_model.safetensors); `PeftModel.from_pretrained(base, it)`

In a LoRA run the top-level model files hold the MERGED weights (W + (alpha / rank) · B A, see
`engines.merged`), so plain transformers loads the trained policy, and the trainer state also
holds the adapter tensors: an exact resume reloads the configured base model, puts them back
and restores the optimizer (whose state covers the adapters only).

`WorkdirCheckpoints` is a workdir as the stability guard's checkpoint store (`guard_policy`): the
newest checkpoint at or before a step, and dropping the ones a rollback abandons.

Retention (`config.checkpoint_keep_last`): after each save, the files of every checkpoint but
the newest k are deleted, except pinned ones (`checkpoints_to_delete` is the rule; the service's
job loop applies it to its checkpoint rows, where the guard pins, `prune_checkpoints` to a
`train()` workdir, where nothing is pinned).

Writes are atomic: everything goes to a hidden temporary sibling directory that is renamed into
place only when complete, so a crash never leaves a half-written checkpoint that resume would
pick up.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from keel.types.checkpoints import ADAPTER_DIR, TRAINER_STATE_FILE
from keel_worker.engines.merged import is_adapter_model, save_policy
from keel_worker.training.guard_policy import StoredCheckpoint

CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "keel.json"
_PREFIX = "step_"


@dataclass
class TrainerState:
    """Everything besides the weights that an exact resume needs."""

    step: int
    policy_version: int
    data_cursor: int
    optimizer: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)
    # `AutoReplay.state_dict()`: the replay decision in force (absent in older checkpoints).
    routing_replay: dict[str, Any] | None = None
    adapter: dict[str, torch.Tensor] | None = None  # LoRA runs: the trained A and B tensors


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(workdir: Path, step: int) -> Path:
    return Path(workdir) / CHECKPOINTS_DIR / f"{_PREFIX}{step:06d}"


@contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """A folder to write `path`'s contents into: renamed to `path` (replacing it) when the block
    ends, removed if it raises, so `path` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    state: TrainerState,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write an HF directory (merged weights) + trainer state (+ `adapter/` for a LoRA policy)
    to `path` atomically; returns `path`."""
    path = Path(path)
    with written_aside(path) as tmp:
        save_policy(model, tmp)
        if is_adapter_model(model):
            model.save_pretrained(tmp / ADAPTER_DIR)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(state.__dict__, tmp / TRAINER_STATE_FILE)
        info = {"step": state.step, "policy_version": state.policy_version, **(summary or {})}
        (tmp / SUMMARY_FILE).write_text(json.dumps(info, indent=2, default=str))
    return path


def complete_checkpoints(workdir: Path) -> dict[int, Path]:
    """`{step: path}` of the complete checkpoints under `workdir`."""
    root = Path(workdir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return {}
    return {
        int(p.name[len(_PREFIX) :]): p
        for p in root.iterdir()
        if p.name.startswith(_PREFIX) and (p / TRAINER_STATE_FILE).is_file()
    }


def latest_checkpoint(workdir: Path) -> Path | None:
    """The complete checkpoint with the highest step under `workdir`, if any."""
    done = complete_checkpoints(workdir)
    return done[max(done)] if done else None


@dataclass(frozen=True)
class WorkdirCheckpoints:
    """The checkpoints under a `train()` workdir as the guard's `CheckpointStore`."""

    workdir: Path

    def latest_at_most(self, step: int) -> StoredCheckpoint | None:
        before = {s: p for s, p in complete_checkpoints(self.workdir).items() if s <= step}
        return StoredCheckpoint(max(before), before[max(before)]) if before else None

    def delete_after(self, step: int) -> None:
        for later_step, later in complete_checkpoints(self.workdir).items():
            if later_step > step:
                shutil.rmtree(later)


def checkpoints_to_delete(steps: dict[int, bool], *, keep_last: int) -> list[int]:
    """The steps whose files retention deletes, given `{step: pinned}` of the checkpoints that
    still have files: all but the newest `keep_last` (≥ 1, so never the newest one), never a
    pinned one."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    kept = set(sorted(steps)[-keep_last:])
    return sorted(step for step, pinned in steps.items() if step not in kept and not pinned)


def prune_checkpoints(workdir: Path, *, keep_last: int) -> list[int]:
    """Apply retention to the checkpoints under a `train()` workdir; returns the steps deleted."""
    done = complete_checkpoints(workdir)
    doomed = checkpoints_to_delete(dict.fromkeys(done, False), keep_last=keep_last)
    for step in doomed:
        shutil.rmtree(done[step])
    return doomed


def load_trainer_state(path: Path) -> TrainerState:
    raw = torch.load(Path(path) / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
    return TrainerState(**raw)


def load_policy(
    path: Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) of a checkpoint: its top-level model (a LoRA run's merged weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, AutoTokenizer.from_pretrained(path)


def load_checkpoint(
    path: Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, TrainerState]:
    """Load (model, tokenizer, trainer state) from a checkpoint written by `save_checkpoint`."""
    model, tokenizer = load_policy(path, dtype=dtype, device=device)
    return model, tokenizer, load_trainer_state(path)
