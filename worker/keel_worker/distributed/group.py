"""The process group of a data-parallel run, set up from torchrun's environment.

torchrun (`torch.distributed.run`) exports `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
`MASTER_PORT` to every rank; `init_from_env` joins that group with gloo on a CPU and NCCL on CUDA.
Every collective of the default group is bounded by `collective_timeout_s`: a rank that dies or
stalls makes the others raise within it instead of waiting forever (the weight sync's all-gathers
included). Rank 0 samples and scores each step while the others wait for its batch
(`distributed.rank_zero`), which can take far longer than a collective (a reward source may
answer in minutes), so that one wait runs on a side gloo group with its own bound,
`rollout_timeout_s`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
DEFAULT_ROLLOUT_TIMEOUT_S = 3600.0


class GroupFailure(RuntimeError):
    """A rank of a data-parallel run stopped: its own error, or a collective that failed because
    another rank died or stalled (gloo and NCCL name neither the rank nor the cause)."""


@dataclass(frozen=True)
class DataParallel:
    """This rank's place in the run: `rank` of `world_size`, the `device` it trains on, the 1-D
    `mesh` FSDP2 shards over and the side group (`objects`) rank 0's batches travel on."""

    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh
    objects: dist.ProcessGroup

    def failure(self, exc: BaseException) -> GroupFailure:
        """`exc` as this rank's `GroupFailure`, saying what it may mean."""
        return GroupFailure(
            f"rank {self.rank} of {self.world_size} stopped: {type(exc).__name__}: {exc} "
            "(a collective that fails or times out means another rank died or stalled; its own "
            "log has the first error)"
        )

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes every file and reports the metrics."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment names a group of more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(
    *,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
    rollout_timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S,
    device: str | None = None,
) -> DataParallel:
    """Join the default group from torchrun's environment (once per process) and describe it.
    `device` None: `cuda:<LOCAL_RANK>` when CUDA is available, else the CPU."""
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if _cuda() else "cpu"
    dev = torch.device(device)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=timedelta(seconds=collective_timeout_s),
        )
    return current(device=device, rollout_timeout_s=rollout_timeout_s)


_JOINED: dict[str, DataParallel] = {}  # "this": the process's description, once made


def current(
    *, device: str | None = None, rollout_timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S
) -> DataParallel | None:
    """The data-parallel description of an initialised group of ≥ 2 ranks, else None (a
    single-process run). The first call on a process is collective (every rank makes it at the
    same point: it creates the side group and the mesh); later ones return the same description,
    whatever they pass."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    if "this" in _JOINED:
        return _JOINED["this"]
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if _uses_nccl() else "cpu"
    dev = torch.device(device)
    objects = dist.new_group(backend="gloo", timeout=timedelta(seconds=rollout_timeout_s))
    mesh = init_device_mesh(dev.type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    _JOINED["this"] = DataParallel(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        device=dev,
        mesh=mesh,
        objects=objects,
    )
    return _JOINED["this"]


def shutdown() -> None:
    """Leave the group (idempotent)."""
    _JOINED.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cuda() -> bool:
    return torch.cuda.is_available()


def _uses_nccl() -> bool:
    return dist.get_backend() == "nccl"
