"""SQLAlchemy models: the whole persistent state of keel (docs/architecture.md §4: the DB is the
single source of truth). Migrations in `migrations/versions` mirror this file exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel_server.db.base import Base, UTCDateTime, utcnow

ID = String(40)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The key that minted this one (None: the admin key or `keel keys create`): revoking it
    # revokes this one too, so a key never outlives the key it came from.
    parent_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )


class File(Base):
    """An uploaded JSONL prompt file (stored under `artifacts_dir/files`)."""

    __tablename__ = "files"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    num_prompts: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index("ix_jobs_project_id_status", "project_id", "status"),
    )
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    requested: Mapped[str | None] = mapped_column(String(20))  # pending "pause" | "cancel"
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # TrainingConfig, dumped
    prompt_source: Mapped[dict[str, Any]] = mapped_column(JSON)  # without inline prompts
    reward_source: Mapped[dict[str, Any]] = mapped_column(JSON)  # without the secret
    num_prompts: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)  # last completed step
    policy_version: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The phase the lease holder last reported entering (keel.types.jobs.JobPhase) and when:
    # liveness is progress, judged per phase (jobrunner.control).
    phase: Mapped[str | None] = mapped_column(String(20))
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reward_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Sealed with Settings.secret_key (platform.security): returned again by an idempotent
    # repeat of the create request; the worker signs webhook deliveries with the secret.
    reward_token_sealed: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str | None] = mapped_column(String(64))  # of the create request
    # keel.types.routing.RoutingReplaySummary, written by the worker after each step
    routing_replay: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    guard: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # keel.types.jobs.GuardSummary
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # keel.types.jobs.JobRuntime, written by the worker at the start of each run.
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Where the lease holder's policy server answers an agent job's episode calls, while it runs.
    serve_url: Mapped[str | None] = mapped_column(Text)
    # host:port of the c10d rendezvous the lease holder hosts for a job of several machines; the
    # workers of the other machines join it there (keel_worker.jobrunner.joining).
    rendezvous: Mapped[str | None] = mapped_column(String(300))


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        Index("ix_prompts_job_id_batch_key", "job_id", "batch_key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # position in the job's prompt stream
    text: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    batch_key: Mapped[str | None] = mapped_column(String(200))  # idempotency key of its batch
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rollout(Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        UniqueConstraint("job_id", "step", "group_index", "sample_index"),
        Index("ix_rollouts_job_id_status", "job_id", "status"),
    )
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    group_index: Mapped[int] = mapped_column(Integer)
    sample_index: Mapped[int] = mapped_column(Integer)
    prompt_index: Mapped[int | None] = mapped_column(Integer)  # None for task prompts
    prompt: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(20))
    # Worker-private data to resume a step after a crash (e.g. token ids); never served.
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="awaiting_reward")
    reward: Mapped[float | None] = mapped_column(Double)
    policy_version: Mapped[int] = mapped_column(Integer)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rewarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # an agent episode's claim


class EpisodeTurn(Base):
    """One call of an agent episode (a rollout), token-exact: what the trainer trains on."""

    __tablename__ = "episode_turns"
    __table_args__ = (UniqueConstraint("rollout_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    sequence_index: Mapped[int] = mapped_column(Integer)
    context_ids: Mapped[list[int]] = mapped_column(JSON)  # appended before sampling (no loss)
    sampled_ids: Mapped[list[int]] = mapped_column(JSON)
    logprobs: Mapped[list[float]] = mapped_column(JSON)  # μ of each sampled token
    policy_version: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str] = mapped_column(String(20))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # added since the last turn
    reply: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "step", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Double)  # NULL = non-finite


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    policy_version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # the checkpoint directory the downloads archive
    # {kind: {"size_bytes", "sha256"}} of each kind's deterministic tar (platform.storage)
    kinds: Mapped[dict[str, Any]] = mapped_column(JSON)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)  # retention never deletes it
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # files deleted by retention
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobEvent(Base):
    """Append-only log behind SSE; the autoincrement id is the SSE `id:`/`Last-Event-ID`."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TinkerSession(Base):
    """A Tinker SDK client's session (`create_session`), kept alive by its heartbeats."""

    __tablename__ = "tinker_sessions"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    tags: Mapped[list[str]] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sdk_version: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # `ServiceClient.close(status)`: its models end now instead of after missed heartbeats.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finish_status: Mapped[str | None] = mapped_column(String(20))


class TinkerRequest(Base):
    """One Tinker call on a model (a job): its future. Queued by the API, executed by the job's
    resident worker in `seq_id` order, answered from `result` by `retrieve_future`; rows, so a
    pending future survives an API restart."""

    __tablename__ = "tinker_requests"
    __table_args__ = (
        UniqueConstraint("job_id", "seq_id"),
        Index("ix_tinker_requests_job_id_state", "job_id", "state"),
    )
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq_id: Mapped[int | None] = mapped_column(Integer)  # None: unordered (sampling)
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the request body, decompressed
    payload_sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(10))  # "proto" | "json"
    state: Mapped[str] = mapped_column(String(10), default="queued")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the SDK's JSON response
    error: Mapped[str | None] = mapped_column(Text)
    error_category: Mapped[str | None] = mapped_column(String(10))  # user | server | unknown
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TinkerWeights(Base):
    """A named save of a Tinker model: `tinker://<job>/weights/<name>` (weights, optionally the
    optimizer) or `tinker://<job>/sampler_weights/<name>` (weights only)."""

    __tablename__ = "tinker_weights"
    __table_args__ = (UniqueConstraint("job_id", "kind", "name"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # "weights" | "sampler_weights"
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)  # the directory under the job's artifacts
    policy_version: Mapped[int] = mapped_column(Integer)
    with_optimizer: Mapped[bool] = mapped_column(Boolean, default=False)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A worker as it advertises itself: what one job may ask of it (docs/how-to/distributed.md).
    Each worker upserts its row at start and every heartbeat interval; job creation checks a job's
    `distributed` request against the rows seen within the lease timeout."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    host: Mapped[str] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(200))
    max_processes: Mapped[int] = mapped_column(Integer)
    engines: Mapped[list[str]] = mapped_column(JSON)  # rollout engines it can run
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
