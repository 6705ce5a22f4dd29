"""Wire model of how many processes, on how many machines, train a run."""

from __future__ import annotations

from pydantic import Field

from keel.types.common import FrozenConfig, Int

MAX_PROCESSES = 1024
MAX_NODES = 256


class DistributedConfig(FrozenConfig):
    """How many processes train the job (docs/how-to/distributed.md). With `processes` × `nodes`
    > 1 the worker that leases the job starts that many ranks with torch.distributed's launcher
    (c10d rendezvous, FSDP2 sharding); the default, 1, trains in the worker's own process."""

    processes: Int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Trainer processes (ranks) on each machine, one per GPU; at most what a "
        "live worker advertises (`KEEL_WORKER_MAX_PROCESSES`), a 422 past it.",
    )
    nodes: Int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Machines the job spans, each running `processes` ranks; more than 1 needs "
        "that many live workers advertising `processes` and a reachable rendezvous.",
    )
    tensor_parallel: Int | None = Field(
        None,
        ge=1,
        le=64,
        description="GPUs one vLLM rollout engine shards the model over (`rollout.engine` "
        "`vllm` only); None = the worker's `KEEL_VLLM_TENSOR_PARALLEL_SIZE`.",
    )

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes
