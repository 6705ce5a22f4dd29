"""Process-wide configuration for the API, the worker and the CLI.

`Settings` is built once per process (`get_settings()` or explicitly in tests) and passed down;
nothing else in keel reads the environment. Every variable has the prefix `KEEL_`, e.g.
`KEEL_DATABASE_URL`. The defaults are the embedded deployment of docs/architecture.md §7: SQLite,
the Celery `filesystem://` broker and artifacts, all under `home` (`.keel/`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keel.types.jobs import JOB_PHASES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore")

    home: Path = Field(default=Path(".keel"), description="Root of the embedded-mode state.")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty = SQLite file `<home>/keel.db`."
    )
    broker_url: str = Field(
        default="filesystem://", description="Celery broker; `filesystem://` = `<home>/broker`."
    )
    broker_dir: Path | None = Field(
        default=None, description="Folder of the filesystem broker; default `<home>/broker`."
    )
    broker_polling_interval_s: float = Field(
        default=0.01,
        description="Seconds between the `filesystem://` broker's checks for new messages "
        "(kombu's default of 1 s adds a second per task).",
    )
    artifacts_dir: Path | None = Field(
        default=None, description="Checkpoints and uploaded files; default `<home>/artifacts`."
    )
    admin_key: str | None = Field(
        default=None, description="Bootstrap admin API key; it may create projects and keys."
    )
    secret_key: str | None = Field(
        default=None,
        description="Fernet key (`platform.security`) sealing webhook secrets and reward "
        "tokens at rest; the API and every worker need the same one. Unset: `<home>/secret_key`.",
    )
    model_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="Folders under which a job may name a local model by absolute path "
        f"(`{os.pathsep}`-separated in the environment); empty = no local paths at all.",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        gt=0,
        description="Body limit of uploads: job creation (inline datasets), prompts, files.",
    )
    max_file_bytes_per_project: int = Field(
        default=1024 * 1024 * 1024,
        gt=0,
        description="Bytes of uploaded prompt files one project may keep (413 past it; "
        "`DELETE /v1/files/{id}` frees space).",
    )
    max_small_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Body limit of every other route (a 10,000-reward batch is about 700 KB).",
    )
    reward_deadline_s: float = Field(default=600.0, gt=0, description="Default reward deadline.")
    lease_timeout_s: float = Field(
        default=60.0, gt=0, description="A lease whose heartbeat is older than this is stale."
    )
    heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between a worker's heartbeats on the job it runs; each renews the "
        "lease and picks up a pause or cancel. Keep it well below the lease timeout.",
    )
    progress_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="A running job whose worker reports no progress (a new phase: load, "
        "prompts, generate, rewards, update, evaluate, checkpoint, calls) for this long is "
        "stuck: it fails with the phase and its last progress named, and its worker process is "
        "replaced. Waits with their own deadline (rewards, prompts) use that deadline instead.",
    )
    phase_timeouts_s: dict[str, float] = Field(
        default_factory=dict,
        description='Per-phase overrides of `progress_timeout_s`, e.g. `{"checkpoint": 600}` '
        "(JSON in the environment).",
    )
    stall_grace_s: float = Field(
        default=300.0,
        gt=0,
        description="Slack past a wait's own deadline before the job counts as stuck; also how "
        "long a pause or cancel waits, with no progress, for the step to stop on its own before "
        "the worker process is stopped and the job ends in the requested state.",
    )
    queued_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A job queued this long without a worker taking it is enqueued again (its "
        "broker message may be lost); a duplicate message finds the job taken and exits.",
    )
    reaper_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="How often the API and each worker sweep for orphaned jobs; default half "
        "the lease timeout.",
    )
    reward_poll_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="Seconds between a worker's checks for the rewards a step waits for "
        "(webhook and external sources).",
    )
    prompt_poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="Seconds between a worker's checks for new prompts while a job waits for "
        "them (`client` prompts that ran out).",
    )
    max_prompt_wait_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a job fed `client` prompts waits for more before it pauses "
        "(freeing its worker; post prompts, then resume it).",
    )
    public_url: str | None = Field(
        default=None,
        description="The URL agent harnesses reach this API at (the episodes' `base_url` is "
        "built on it); default: the URL each claim request came to.",
    )
    serve_host: str = Field(
        default="127.0.0.1",
        description="Address a worker's policy server binds to while it runs an agent job; "
        "`0.0.0.0` when the API runs on another machine.",
    )
    serve_port: int = Field(
        default=0, ge=0, le=65535, description="Its port; 0 = any free port (one per job)."
    )
    serve_advertise_host: str | None = Field(
        default=None,
        description="Host name the API uses to reach a worker's policy server; default "
        "`serve_host`, or this machine's hostname when that is `0.0.0.0`.",
    )
    serve_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds one model call of an agent episode may take, queued and sampled "
        "(the API's wait on the worker; the worker answers 504 past it).",
    )
    tinker_poll_interval_s: float = Field(
        default=0.01,
        gt=0,
        description="Seconds between a Tinker model's checks of its request queue while it has "
        "nothing to run (the worker's side; calls wait at most this long to start).",
    )
    tinker_seq_gap_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a Tinker model waits for a missing `seq_id` before it fails the "
        "calls queued after it.",
    )
    tinker_session_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds without a heartbeat after which a Tinker SDK session has ended "
        "(the SDK beats every 10 s and never unloads its models): its models' jobs end.",
    )
    tinker_fwdbwd_max_chunk_len: int = Field(
        default=1024,
        ge=1,
        description="Most data the Tinker SDK puts in one forward_backward request; it splits a "
        "larger batch into chunks, whose gradients add up to the batch's.",
    )
    tinker_idle_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds a Tinker model stays resident with no call; then its job pauses "
        "(its saved weights stay; a new call resumes it).",
    )
    job_queue: str = Field(default="keel", description="Celery queue that `keel.run_job` uses.")
    job_task_expires_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Expiry of a queued `keel.run_job` message."
    )
    # A job's trainer processes (`TrainingConfig.distributed`; docs/how-to/distributed.md).
    worker_max_processes: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Trainer processes (ranks) this worker may start for one job, advertised "
        "in the `workers` table and checked at job creation; unset: the number of CUDA GPUs, "
        "or 1 without one.",
    )
    group_stall_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="A job's rank group that reports no progress (a step, a phase, a check "
        "while it waits for prompts or rewards) for this long is stopped and the job fails "
        "with the reason. Keep it above the collective timeout.",
    )
    group_requeues: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Times a job whose rank was killed by a signal or whose group stalled is "
        "put back in the queue (it resumes from its latest checkpoint) before such a failure "
        "fails it; 0 = fail at once.",
    )
    group_stop_grace_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a rank group gets to stop on its own after a pause or cancel "
        "(at a step boundary, a pause checkpointing first) before the worker terminates it.",
    )
    rendezvous_host: str = Field(
        default="127.0.0.1",
        description="Address the other machines of a several-machine job reach this worker's "
        "c10d rendezvous at; 127.0.0.1 serves one machine only.",
    )
    rendezvous_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the c10d rendezvous a worker hosts for the job it leases; 0 = a "
        "free port (one machine), a fixed port for several machines.",
    )
    rendezvous_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds the machines of a job wait for each other at its rendezvous "
        "before the job fails.",
    )
    webhook_allow: str = Field(
        default="",
        description="Comma-separated hostnames and IP networks webhooks may be delivered to "
        "although they are not public (platform.webhook_targets); `keel up` allows loopback.",
    )
    webhook_backoff_s: float = Field(
        default=0.5,
        ge=0,
        description="Seconds before a webhook delivery's second attempt, doubled for each "
        "further one; 0 = retry at once.",
    )
    webhook_backoff_max_s: float = Field(
        default=30.0,
        ge=0,
        description="The longest wait between two webhook delivery attempts (the doubling "
        "stops there). A delivery also ends at its rollouts' reward deadline.",
    )
    webhook_max_reply_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="The largest webhook reply a worker reads; a longer one fails the "
        "delivery (inline rewards are a short JSON list).",
    )
    sse_poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="Seconds between an event stream's checks for new job events; also the "
        "reconnect delay (`retry:`) it gives clients.",
    )
    sse_keepalive_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds without an event after which an event stream sends a keep-alive "
        "comment, so proxies keep it open.",
    )
    sse_max_streams_per_key: int = Field(
        default=10,
        ge=1,
        description="Event streams one key (or the admin key, or a reward token) may hold open "
        "in one API process; one more is refused with 429.",
    )
    sse_max_age_s: float = Field(
        default=1800.0,
        gt=0,
        description="Seconds after which an event stream ends with a `reconnect` event; the "
        "client resumes from its last event id (the SDK does so itself).",
    )
    sse_key_check_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between an event stream's checks that its key is not revoked (a "
        "revocation in the same API process ends its streams at once).",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds `keel server` and `keel up` wait on SIGTERM for requests still "
        "running (a checkpoint download) before cutting them; event streams end at once.",
    )
    tinker_retrieve_wait_s: float = Field(
        default=20.0,
        gt=0,
        lt=45,
        description="Seconds a Tinker `retrieve_future` waits for its result before answering "
        "408 try-again (under the SDK's 45 s read timeout).",
    )
    tinker_retrieve_poll_s: float = Field(
        default=0.1,
        gt=0,
        description="Seconds between a waiting `retrieve_future`'s checks of its request row.",
    )
    max_active_jobs_per_project: int = Field(
        default=16, ge=1, description="Queued + running jobs a project may have (429 past it)."
    )
    rate_limit_per_s: float = Field(
        default=200.0,
        gt=0,
        description="Sustained requests per second per project (429 with Retry-After past it). "
        "With a Redis broker it holds across every API process (the buckets live in that "
        "Redis); otherwise each API process enforces it on its own.",
    )
    rate_limit_burst: int = Field(default=1000, ge=1, description="Requests a project may burst.")
    api_workers: int = Field(
        default=1,
        ge=0,
        description="API processes `keel server` runs (uvicorn workers) when `--workers` is not "
        "given; 0 = one per CPU core it may use (the compose deployment's default).",
    )
    api_database_connections: int = Field(
        default=50,
        ge=1,
        description="PostgreSQL connections the API may hold in all, split evenly among its "
        "processes (at least 4 each), so one API process per core does not exhaust "
        "PostgreSQL's `max_connections` (100 by default; workers need a few each too).",
    )
    max_reward_wait_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Operator cap on the total time one job may wait "
        "for rewards; past it the worker fails the job instead of holding its GPU.",
    )
    page_size_default: int = Field(
        default=50, ge=1, description="Items per page of a list request without `limit`."
    )
    page_size_max: int = Field(
        default=500,
        ge=1,
        description="The largest `limit` a list request may ask for (422 past it).",
    )
    metrics_access: Literal["token", "open", "off"] = Field(
        default="token",
        description="Prometheus `GET /metrics`: `token` = Bearer `metrics_token` or the admin "
        "key; `open` = no auth (a scrape network you trust); `off` = 404.",
    )
    metrics_token: str | None = Field(
        default=None, description="Bearer token a Prometheus scraper sends to `GET /metrics`."
    )

    # Database blips (a restart, a failover, dropped connections: keel_server.db.transient).
    db_recovery_attempts: int = Field(
        default=10,
        ge=0,
        description="Times in a row (with no step completed in between) a worker resumes a job "
        "from its last checkpoint after the database dropped its connections, before the job "
        "fails; 0 = fail at once.",
    )
    db_recovery_backoff_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds a worker waits before resuming a job after a database blip, doubled "
        "for each further blip in a row (up to `db_recovery_wait_s`), so a flapping database "
        "does not use up `db_recovery_attempts` in a second.",
    )
    db_recovery_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a worker waits for the database to answer again after a dropped "
        "connection before it gives the job up (another worker takes it over later).",
    )

    # The `vllm` rollout engine on this worker (keel_worker.engines.vllm.VLLMOptions).
    vllm_kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="KV cache size of the vllm engine in GiB (vLLM's kv_cache_memory_bytes; on "
        "a CPU worker the memory it allocates for the cache). Unset: vLLM sizes it from "
        "`vllm_gpu_memory_utilization`.",
    )
    vllm_cpu_reserved_cpus: int = Field(
        default=0,
        ge=0,
        description="CPU cores vLLM's CPU backend leaves out of its thread binding "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU); 0 uses every core the worker may run on.",
    )
    vllm_max_model_len: int | None = Field(
        default=None,
        ge=2,
        description="Longest prompt + response the vllm engine serves; unset: the model's "
        "own context length. Lower it to fit the KV cache.",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Share of GPU memory vLLM may take (weights, activations, KV cache); the "
        "trainer shares the GPU, so well below vLLM's own 0.9. On a CPU: the share of RAM.",
    )
    vllm_tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="GPUs one vllm engine shards the model over; 1 runs it in the worker's "
        "process, more in vLLM worker processes that the weight sync reaches by RPC.",
    )
    # A job on several trainer processes (torch.distributed, docs/how-to/distributed.md).
    collective_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Bound on every collective of a multi-process job (gradient reductions, "
        "parameter gathers, the weight sync to the rollout engine, checkpoint barriers): a rank "
        "that dies or stalls makes the others fail within it instead of hanging.",
    )
    rollout_wait_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long the other ranks of a multi-process job wait for rank 0's sampled "
        "and scored batch each step (its generation and the rewards, which may come from "
        "outside); keep it above the reward deadline.",
    )

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(p) for p in value.split(os.pathsep) if p.strip())
        return value

    @field_validator("phase_timeouts_s")
    @classmethod
    def _known_phases(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(JOB_PHASES))
        if unknown:
            raise ValueError(f"unknown phases {unknown}; the phases are {list(JOB_PHASES)}")
        if any(not bound > 0 for bound in value.values()):
            raise ValueError("each phase timeout must be a positive number of seconds")
        return value

    def phase_timeout_s(self, phase: str) -> float:
        """The progress bound of `phase`: its override, else `progress_timeout_s`."""
        return self.phase_timeouts_s.get(phase, self.progress_timeout_s)

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.home / 'keel.db').as_posix()}"
        if self.broker_dir is None:
            self.broker_dir = self.home / "broker"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.home / "artifacts"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def api_process_count(workers: int) -> int:
    """How many API processes `api_workers` (or `keel server --workers`) means: the number, or
    for 0 one per CPU core this process may run on (its affinity: a container limited to some
    cores gets that many)."""
    if workers < 0:
        raise ValueError(f"API workers must be 0 (one per core) or more, not {workers}")
    if workers:
        return workers
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


MIN_CONNECTIONS_PER_API_PROCESS = 4


def api_process_connections(settings: Settings) -> int:
    """This API process's share of `api_database_connections`."""
    share = settings.api_database_connections // api_process_count(settings.api_workers)
    return max(MIN_CONNECTIONS_PER_API_PROCESS, share)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's one Settings, read from the environment on first use."""
    return Settings()
