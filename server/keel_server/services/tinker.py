"""The Tinker-compatible surface's rules: sessions, models, and the calls queued on a model.

A Tinker model is a keel job (`model_id` = job id; `prompt_source = {"type": "tinker"}`), so
tenancy, quotas, the dashboard and checkpoints apply to it unchanged. The API executes nothing:
it checks a call (its body, its model's project, its `seq_id`) and queues it as a
`TinkerRequest` row, the SDK's future; the job's resident worker runs the rows in `seq_id` order
and stores each result, which `services.tinker_futures` hands back. A refused call stores nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from keel.types.tinker import (
    TINKER_KEY_PREFIX,
    TINKER_PATH_SCHEME,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    LoadWeightsRequest,
    ModelRequest,
    OptimStepRequest,
    SampleRequest,
    SaveWeightsRequest,
    SessionHeartbeatRequest,
)
from keel.types.training import TrainingConfig
from keel_server.db import jobs as jobs_db
from keel_server.db import new_id, session_scope, stored
from keel_server.db import tinker as tinker_db
from keel_server.db.models import Job, TinkerWeights
from keel_server.platform.model_access import BUILTIN_MODELS
from keel_server.platform.security import hash_secret, new_reward_token
from keel_server.platform.tinker_wire import WireError, decompress, parse_forward_backward
from keel_server.services import auth
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, not_found
from keel_server.services.jobs import enqueue, resume
from keel_server.services.models_check import check_model
from keel_server.services.quotas import check_active_jobs

TINKER_SOURCE = {"type": "tinker"}
SAVE_KINDS = ("weights", "sampler_weights")  # tinker://<model>/<kind>/<name>
_ENDED = ("succeeded", "failed", "cancelled")


def authenticate(ctx: ServiceContext, api_key: str | None) -> Principal:
    """The SDK sends its key as `X-API-Key: tml-<keel key>`; the keel key authenticates."""
    if not api_key:
        raise ServiceError("unauthorized", "missing API key: set TINKER_API_KEY=tml-<keel key>")
    key = api_key.removeprefix(TINKER_KEY_PREFIX)
    principal = auth.authenticate(ctx, key)
    auth.require_api_key(principal)
    return principal


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """A JSON body as its request model; a 400 naming the first bad field."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> ServiceError:
    """A 400 naming the first bad field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return ServiceError("invalid_request", f"{where}: {first['msg']}")


# ---- handshake and sessions ---------------------------------------------------------------------


def client_config(ctx: ServiceContext) -> dict[str, Any]:
    """The flags the SDK asks for before anything else: API keys, no JWT exchange, and
    forward_backward chunks that fit this server's body limit."""
    return {
        "pjwt_auth_enabled": False,
        "proto_compress_fwdbwd": False,
        "fwdbwd_max_chunk_bytes_count": ctx.settings.max_body_bytes // 2,
        "fwdbwd_max_chunk_len": ctx.settings.tinker_fwdbwd_max_chunk_len,
        "sample_use_retrieve_futures": False,
        "custom_loss_server_side": False,
        "sample_join_sampling_session": False,
        "use_pyqwest_transport": False,
    }


def capabilities() -> dict[str, Any]:
    models = [
        {"model_name": name, "trainable": True, "sampleable": True} for name in BUILTIN_MODELS
    ]
    return {"supported_models": models}


def create_session(ctx: ServiceContext, principal: Principal, req: CreateSessionRequest) -> str:
    with session_scope(ctx.sessions) as session:
        row = tinker_db.create_session(
            session,
            project_id=principal.project_id,
            tags=req.tags,
            user_metadata=req.user_metadata,
            sdk_version=req.sdk_version[:50],
        )
        return row.id


def heartbeat(ctx: ServiceContext, principal: Principal, req: SessionHeartbeatRequest) -> None:
    with session_scope(ctx.sessions) as session:
        _load_session(session, principal, req.session_id)
        tinker_db.heartbeat(session, req.session_id)


def finish_session(ctx: ServiceContext, principal: Principal, session_id: str, status: str) -> None:
    """`ServiceClient.close`: the session's models end (their workers see it at once)."""
    with session_scope(ctx.sessions) as session:
        _load_session(session, principal, session_id)
        tinker_db.finish_session(session, session_id, status)


def _load_session(session: Session, principal: Principal, session_id: str) -> None:
    row = tinker_db.get_session(session, session_id)
    if row is None or row.project_id != principal.project_id:
        raise not_found("session", session_id)


# ---- models -------------------------------------------------------------------------------------


def create_model(ctx: ServiceContext, principal: Principal, req: CreateModelRequest) -> dict:
    """A job for the model, and a future already answered with its id."""
    lora = {"rank": req.lora_config.rank} if req.lora_config else None
    seed = req.lora_config.seed if req.lora_config else None
    job_id = _create_job(ctx, principal, req.session_id, req.base_model, lora=lora, seed=seed)
    result = {"type": "create_model", "model_id": job_id}
    with session_scope(ctx.sessions) as session:
        row = tinker_db.resolved(session, job_id=job_id, kind="create_model", result=result)
        return {"request_id": row.id, "model_id": job_id}


def _create_job(
    ctx: ServiceContext,
    principal: Principal,
    session_id: str,
    base_model: str,
    *,
    lora: dict | None,
    seed: int | None,
) -> str:
    config = _training_config(base_model, lora=lora, seed=seed)
    check_model(ctx, principal, config)
    with session_scope(ctx.sessions) as session:
        _load_session(session, principal, session_id)
        check_active_jobs(ctx, session, principal.project_id)
        job = jobs_db.insert_job(
            session,
            id=new_id("job"),
            project_id=principal.project_id,
            name=f"tinker {base_model}",
            status="queued",
            config=config.model_dump(mode="json"),
            # The worker ends the model's run when this session stops its heartbeats.
            prompt_source={**TINKER_SOURCE, "session_id": session_id},
            reward_source={"type": "external"},
            steps=config.steps,
            reward_token_hash=hash_secret(new_reward_token()),
        )
        job_id = job.id
    enqueue(ctx, job_id)
    return job_id


def _training_config(base_model: str, *, lora: dict | None, seed: int | None) -> TrainingConfig:
    fields: dict[str, Any] = {"model": {"name": base_model}, "lora": lora}
    if seed is not None:
        fields["seed"] = seed
    try:
        return TrainingConfig.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


def model_facts(job: Job) -> dict[str, Any]:
    """What the SDK's responses say of a model: its base model and LoRA rank."""
    config = stored.training_config(job)
    lora = config.lora
    return {
        "base_model": config.model.name,
        "is_lora": lora is not None,
        "lora_rank": lora.rank if lora else None,
    }


def get_info(ctx: ServiceContext, principal: Principal, req: ModelRequest) -> dict:
    with session_scope(ctx.sessions) as session:
        job = load_model(session, principal, req.model_id)
        facts = model_facts(job)
    name = facts.pop("base_model")
    return {
        "type": "get_info",
        "model_id": job.id,
        "model_data": {"arch": None, "model_name": name, "tokenizer_id": name},
        "model_name": name,
        **facts,
    }


def load_model(session: Session, principal: Principal, model_id: str) -> Job:
    """The caller's Tinker model; another project's (or a non-Tinker job) is not found."""
    try:
        job = auth.load_job(session, principal, model_id)
    except ServiceError as exc:
        raise not_found("model", model_id) from exc
    if stored.prompt_type(job) != TINKER_SOURCE["type"]:
        raise not_found("model", model_id)
    return job


# ---- calls queued on a model ---------------------------------------------------------------------


def submit_forward_backward(
    ctx: ServiceContext, principal: Principal, body: bytes, content_encoding: str | None
) -> dict:
    """forward and forward_backward: the protobuf body (zstd or not), checked whole before it is
    queued decompressed."""
    try:
        body = decompress(body, content_encoding, limit=ctx.settings.max_body_bytes * 4)
        call = parse_forward_backward(body)
    except WireError as exc:
        raise ServiceError("invalid_request", str(exc)) from None
    kind = "forward" if call.forward_only else "forward_backward"
    return _submit(ctx, principal, call.model_id, call.seq_id, kind, body, "proto")


def submit_optim_step(ctx: ServiceContext, principal: Principal, req: OptimStepRequest) -> dict:
    return _submit_json(ctx, principal, "optim_step", req)


def submit_save(
    ctx: ServiceContext, principal: Principal, req: SaveWeightsRequest, *, for_sampler: bool
) -> dict:
    kind = "save_weights_for_sampler" if for_sampler else "save_weights"
    if not for_sampler and req.path is None:
        raise ServiceError("invalid_request", "path: save_weights needs a name")
    return _submit_json(ctx, principal, kind, req)


def submit_load(ctx: ServiceContext, principal: Principal, req: LoadWeightsRequest) -> dict:
    with session_scope(ctx.sessions) as session:
        resolve_path(session, principal, req.path, kinds=("weights",))
    return _submit_json(ctx, principal, "load_weights", req)


def submit_unload(ctx: ServiceContext, principal: Principal, req: ModelRequest) -> dict:
    return _submit_json(ctx, principal, "unload_model", req)


def _submit_json(ctx: ServiceContext, principal: Principal, kind: str, req: Any) -> dict:
    # The validated body, re-serialized: the worker reads exactly what was checked, and a retry
    # of the same call (same fields) is the same payload.
    payload = req.model_dump_json(exclude_none=True).encode()
    return _submit(
        ctx, principal, req.model_id, getattr(req, "seq_id", None), kind, payload, "json"
    )


def _submit(
    ctx: ServiceContext,
    principal: Principal,
    model_id: str,
    seq_id: int | None,
    kind: str,
    payload: bytes,
    content_type: str,
) -> dict:
    with session_scope(ctx.sessions) as session:
        job = load_model(session, principal, model_id)
        if job.status in _ENDED:
            raise ServiceError(
                "conflict", f"model {model_id} is {job.status}: it takes no more calls"
            )
        paused = job.status == "paused"
        try:
            row = tinker_db.submit(
                session,
                job_id=job.id,
                seq_id=seq_id,
                kind=kind,
                payload=payload,
                content_type=content_type,
            )
        except tinker_db.SeqConflict as exc:
            raise ServiceError(
                "conflict", str(exc), state={"seq_id": exc.seq_id, "request_id": exc.request_id}
            ) from None
        future = {"request_id": row.id, "model_id": job.id}
    if paused:  # idle, or paused by its user: its next call loads it again, from its newest save
        resume(ctx, principal, job.id, reason=f"resumed by a Tinker {kind} call")
    return future


# ---- sampling -----------------------------------------------------------------------------------


def resolve_path(
    session: Session, principal: Principal, path: str, *, kinds: tuple[str, ...] = SAVE_KINDS
) -> tuple[Job, TinkerWeights]:
    """`tinker://<model>/<kind>/<name>` of the caller's project: (its job, the save)."""
    parts = path.removeprefix(TINKER_PATH_SCHEME).split("/")
    if not path.startswith(TINKER_PATH_SCHEME) or len(parts) != 3 or parts[1] not in kinds:
        shapes = " or ".join(f"{TINKER_PATH_SCHEME}<model_id>/{k}/<name>" for k in kinds)
        raise ServiceError("invalid_request", f"path {path!r} is not {shapes}")
    model_id, kind, name = parts
    job = load_model(session, principal, model_id)
    weights = tinker_db.find_weights(session, job.id, kind, name)
    if weights is None:
        raise not_found("weights", path)
    return job, weights


def _sampler_target(session: Session, principal: Principal, target: str) -> tuple[Job, str | None]:
    """The model a sampling session (`<model_id>` or `<model_id>/<kind>/<name>`) or a
    `tinker://` path samples with, and the saved weights' path (None: its live weights)."""
    if not target.startswith(TINKER_PATH_SCHEME):
        model_id, _, rest = target.partition("/")
        if not rest:
            return load_model(session, principal, model_id), None
        target = f"{TINKER_PATH_SCHEME}{target}"
    job, weights = resolve_path(session, principal, target)
    return job, f"{TINKER_PATH_SCHEME}{job.id}/{weights.kind}/{weights.name}"


def create_sampling_session(
    ctx: ServiceContext, principal: Principal, req: CreateSamplingSessionRequest
) -> str:
    """A sampling session is the model that serves it and the weights it samples:
    `<model_id>` (its current weights, for a base model a job of its own that never trains)
    or `<model_id>/<kind>/<name>` (saved weights)."""
    if req.model_path:
        with session_scope(ctx.sessions) as session:
            _load_session(session, principal, req.session_id)
            job, weights = resolve_path(session, principal, req.model_path)
        return f"{job.id}/{weights.kind}/{weights.name}"
    if not req.base_model:
        raise ServiceError("invalid_request", "base_model or model_path is required")
    return _create_job(ctx, principal, req.session_id, req.base_model, lora=None, seed=None)


def get_sampler(ctx: ServiceContext, principal: Principal, sampling_session_id: str) -> dict:
    """What the SDK asks of a sampling session it did not create itself: its base model and
    the weights it samples (`create_sampling_client(model_path=...)`)."""
    with session_scope(ctx.sessions) as session:
        job, model_path = _sampler_target(session, principal, sampling_session_id)
        base_model = model_facts(job)["base_model"]
    return {"sampler_id": sampling_session_id, "base_model": base_model, "model_path": model_path}


def submit_sample(ctx: ServiceContext, principal: Principal, req: SampleRequest) -> dict:
    """A sample is unordered (`seq_id` None): sampling does not change the model, and the
    SDK's sampling `seq_id`s count per sampling session, not per model."""
    target = req.sampling_session_id or req.model_path
    if not target:
        raise ServiceError("invalid_request", "sampling_session_id or model_path is required")
    with session_scope(ctx.sessions) as session:
        job, model_path = _sampler_target(session, principal, target)
    queued = req.model_copy(update={"model_path": model_path, "sampling_session_id": None})
    payload = queued.model_dump_json(exclude_none=True).encode()
    future = _submit(ctx, principal, job.id, None, "sample", payload, "json")
    future["sample_sequence_ids"] = [f"{future['request_id']}-{i}" for i in range(req.num_samples)]
    return future
