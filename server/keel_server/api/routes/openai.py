"""`/v1/openai/*`: the OpenAI-compatible surface an agent harness points its `openai` client at
(docs/concepts/agents.md §1). Only an episode key may call it.

The API samples nothing: it checks the key, the episode and the body, then forwards the call to
the policy server of the worker running the episode's job (`services.episodes.policy_target`)
and relays its answer. Errors are in OpenAI's shape (`{"error": {"message", "type", "code"}}`)
so that the `openai` SDK shows them as it shows OpenAI's own.
"""

from __future__ import annotations

import math

import httpx
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from keel.types.agents import ChatCompletionRequest, CompletionRequest, OpenAIErrorBody
from keel.types.errors import STATUS_OF_CODE
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx
from keel_server.api.errors import error_responses
from keel_server.services import episodes as service
from keel_server.services.errors import ServiceError

# 401, 413 and 429 are answered before a route runs, in keel's envelope; the rest in OpenAI's.
_OPENAI_ERRORS = {
    status: {"model": OpenAIErrorBody, "description": description}
    for status, description in (
        (400, "The call cannot be served as asked (`code` says why)."),
        (403, "Not an episode key."),
        (404, "The episode is gone."),
        (409, "The episode was rewarded or expired, or its job ended."),
        (503, "No worker serves the episode's job now; retry after `Retry-After`."),
        (504, "The worker did not answer in time."),
    )
}
router = APIRouter(
    prefix="/openai",
    tags=["openai"],
    route_class=AuthenticatedRoute,
    responses={**error_responses(401, 413, 429), **_OPENAI_ERRORS},
)

SERVE_SECRET_HEADER = "X-Keel-Serve-Secret"
_REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}


@router.post("/chat/completions", openapi_extra={"requestBody": _REQUEST_BODY})
async def chat_completions(request: Request, ctx: Ctx, caller: Caller) -> JSONResponse:
    """A chat turn of the caller's episode, sampled by the live policy."""
    return await _forward(request, ctx, caller, "chat/completions", ChatCompletionRequest)


@router.post("/completions", openapi_extra={"requestBody": _REQUEST_BODY})
async def completions(request: Request, ctx: Ctx, caller: Caller) -> JSONResponse:
    """A raw-prompt completion of the caller's episode (the prompt is tokenized as is)."""
    return await _forward(request, ctx, caller, "completions", CompletionRequest)


@router.get("/models")
async def list_models(ctx: Ctx, caller: Caller) -> JSONResponse:
    """The one model an episode key can call: its job's policy."""
    if caller.episode_id is None:
        return _error(ServiceError("forbidden", service.NOT_AN_EPISODE_KEY))
    data = [{"id": caller.job_id, "object": "model", "owned_by": "keel"}]
    return JSONResponse({"object": "list", "data": data})


async def _forward(
    request: Request, ctx: Ctx, caller: Caller, kind: str, model: type[BaseModel]
) -> JSONResponse:
    try:
        target = await run_in_threadpool(service.policy_target, ctx, caller)
        body = _validated(await request.body(), model)
    except ServiceError as exc:
        return _error(exc)
    client: httpx.AsyncClient = request.app.state.policy_client
    try:
        reply = await client.post(
            f"{target.url}/episodes/{caller.episode_id}/{kind}",
            json=body,
            headers={SERVE_SECRET_HEADER: target.secret},
            timeout=ctx.settings.serve_timeout_s + 5.0,
        )
    except httpx.TimeoutException:
        return _error(ServiceError("policy_timeout", "the policy server did not answer in time"))
    except httpx.HTTPError:
        detail = "the worker serving this job cannot be reached; retry shortly"
        return _error(ServiceError("policy_unavailable", detail, retry_after_s=1.0))
    answer = reply.json()
    if reply.is_success:
        return JSONResponse(answer, status_code=reply.status_code)
    return _openai_error(
        reply.status_code, answer.get("code", "internal_error"), answer.get("detail", "")
    )


def _validated(raw: bytes, model: type[BaseModel]) -> dict:
    """The body as the policy server gets it: validated, without the unset fields."""
    try:
        return model.model_validate_json(raw).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ServiceError("invalid_request", f"{where}: {first['msg']}") from None


def _error(exc: ServiceError) -> JSONResponse:
    response = _openai_error(exc.status, exc.code, exc.detail)
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return response


def _openai_error(status: int, code: str, detail: str) -> JSONResponse:
    kind = "invalid_request_error" if STATUS_OF_CODE.get(code, status) < 500 else "server_error"
    body = {"error": {"message": detail, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)
