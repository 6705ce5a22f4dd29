"""Whether the workers of a queue can run a job's `distributed` request (docs/how-to/distributed.md,
"Which worker runs a job").

A worker advertises the trainer processes it may start for one job (`Settings.worker_max_processes`)
and its rollout engines (`keel_server.db.workers`). A job asking for `processes` ranks on each of
`nodes` machines needs `nodes` live workers that each advertise at least `processes`; a vLLM
tensor-parallel size needs a live vLLM worker with that many. The API checks this at creation
against the workers seen within the lease timeout; the worker that leases the job checks its own
advertisement again (the job may have been created while no worker was live).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keel.types.training import DistributedConfig


@dataclass(frozen=True)
class Advertised:
    """One worker's advertisement, as job creation sees it."""

    worker_id: str
    max_processes: int
    engines: tuple[str, ...]


def needs_check(request: DistributedConfig) -> bool:
    """The default request (one process, the worker's own tensor parallel) runs anywhere."""
    return request.world_size > 1 or (request.tensor_parallel or 1) > 1


def refusal(request: DistributedConfig, workers: Sequence[Advertised]) -> tuple[str, str] | None:
    """Why `workers` cannot run `request`: (the field at fault, the message), or None."""
    most = max((w.max_processes for w in workers), default=0)
    if request.processes > most:
        return "processes", (
            f"asks for {request.processes} trainer processes per machine; the live workers "
            f"run at most {most} per job (KEEL_WORKER_MAX_PROCESSES)"
        )
    able = [w for w in workers if w.max_processes >= request.processes]
    if request.nodes > len(able):
        return "nodes", (
            f"asks for {request.nodes} machines of {request.processes} processes each; "
            f"{len(able)} live worker(s) advertise that many (KEEL_WORKER_MAX_PROCESSES)"
        )
    tp = request.tensor_parallel or 1
    vllm_most = max((w.max_processes for w in workers if "vllm" in w.engines), default=0)
    if tp > 1 and tp > vllm_most:
        return "tensor_parallel", (
            f"asks for a vLLM engine over {tp} GPUs; the live vLLM workers have at most "
            f"{vllm_most} (KEEL_WORKER_MAX_PROCESSES)"
        )
    return None
