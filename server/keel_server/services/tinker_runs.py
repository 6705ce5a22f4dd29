"""The Tinker RestClient's view of models and their saves: training runs (a Tinker model's job)
and their checkpoints (its named weight saves, `tinker://<model>/<kind>/<name>`), in the SDK's
JSON shapes (`tinker.types.TrainingRun`, `Checkpoint`, `WeightsInfoResponse`).

Ephemeral saves (a sampler's weights saved without a name) are no checkpoints to the user and
are not listed. Deleting a checkpoint forgets its name; its files go with the job's artifacts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from keel.types.tinker import TINKER_PATH_SCHEME
from keel_server.db import jobs as jobs_db
from keel_server.db import session_scope
from keel_server.db import tinker as tinker_db
from keel_server.db.models import Job, TinkerWeights
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.tinker import TINKER_SOURCE, load_model, model_facts, resolve_path

_CHECKPOINT_TYPE = {"weights": "training", "sampler_weights": "sampler"}


def _checkpoint(row: TinkerWeights) -> dict[str, Any]:
    return {
        "checkpoint_id": f"{row.kind}/{row.name}",
        "checkpoint_type": _CHECKPOINT_TYPE[row.kind],
        "time": row.created_at.isoformat(),
        "tinker_path": f"{TINKER_PATH_SCHEME}{row.job_id}/{row.kind}/{row.name}",
        "size_bytes": row.size_bytes,
    }


def _named(session: Session, job_id: str) -> list[TinkerWeights]:
    return [w for w in tinker_db.list_weights(session, job_id) if not w.ephemeral]


def _training_run(session: Session, job: Job) -> dict[str, Any]:
    saves = sorted(_named(session, job.id), key=lambda w: w.created_at)
    last = dict.fromkeys(_CHECKPOINT_TYPE)
    for row in saves:
        last[row.kind] = _checkpoint(row)
    return {
        "training_run_id": job.id,
        **model_facts(job),
        "model_owner": job.project_id,
        "corrupted": job.status == "failed",
        "last_request_time": job.updated_at.isoformat(),
        "last_checkpoint": last["weights"],
        "last_sampler_checkpoint": last["sampler_weights"],
    }


def training_run(ctx: ServiceContext, principal: Principal, model_id: str) -> dict[str, Any]:
    with session_scope(ctx.sessions) as session:
        return _training_run(session, load_model(session, principal, model_id))


def training_runs(
    ctx: ServiceContext, principal: Principal, *, offset: int, limit: int
) -> dict[str, Any]:
    with session_scope(ctx.sessions) as session:
        jobs, total = jobs_db.jobs_of_source(
            session, principal.project_id, TINKER_SOURCE["type"], offset=offset, limit=limit
        )
        runs = [_training_run(session, job) for job in jobs]
    cursor = {"offset": offset, "limit": limit, "total_count": total}
    return {"training_runs": runs, "cursor": cursor}


def checkpoints(ctx: ServiceContext, principal: Principal, model_id: str) -> dict[str, Any]:
    with session_scope(ctx.sessions) as session:
        job = load_model(session, principal, model_id)
        return {"checkpoints": [_checkpoint(w) for w in _named(session, job.id)]}


def delete_checkpoint(
    ctx: ServiceContext, principal: Principal, model_id: str, checkpoint_id: str
) -> None:
    path = f"{TINKER_PATH_SCHEME}{model_id}/{checkpoint_id}"
    with session_scope(ctx.sessions) as session:
        _, weights = resolve_path(session, principal, path)
        tinker_db.delete_weights(session, weights.id)


def weights_info(ctx: ServiceContext, principal: Principal, tinker_path: str) -> dict[str, Any]:
    with session_scope(ctx.sessions) as session:
        job, _ = resolve_path(session, principal, tinker_path)
        return model_facts(job)
