"""`/tinker/api/v1/*`: the surface the unmodified `tinker` SDK (0.38.0) talks to, with
`base_url=<keel>/tinker` and `TINKER_API_KEY=tml-<keel key>` (docs/architecture.md §1).

The SDK authenticates with `X-API-Key`, not a bearer token, so these routes authenticate from
that header (`TinkerRoute`), before the body is read, like every keel route. Errors use keel's
envelope `{code, detail}` (the SDK shows the body it gets), and a 4xx carries
`x-should-retry: false`: the SDK retries a 409 by default, and a `seq_id` conflict answers the
same every time. Handlers parse and call one service function; the rules live in
`services.tinker` and `services.tinker_futures`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from keel.types import tinker as wire
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Ctx, Id
from keel_server.api.errors import envelope
from keel_server.platform.settings import Settings
from keel_server.services import tinker as service
from keel_server.services import tinker_futures, tinker_runs
from keel_server.services.context import Principal
from keel_server.services.errors import ServiceError

PROTO = "application/x-protobuf"


class TinkerRoute(AuthenticatedRoute):
    """Authenticated by `X-API-Key: tml-<keel key>`; a ServiceError is answered here, so its
    4xx can tell the SDK not to retry."""

    @staticmethod
    def body_limit(settings: Settings) -> int:
        return settings.max_body_bytes  # forward_backward chunks (the SDK is told the limit)

    def get_route_handler(self):
        read_body_and_run = super(AuthenticatedRoute, self).get_route_handler()

        async def authenticate_first(request: Request) -> Response:
            ctx = request.app.state.ctx
            try:
                principal = await run_in_threadpool(
                    service.authenticate, ctx, request.headers.get("x-api-key")
                )
                await request.app.state.rate_limiter.check(principal)
                request.state.principal = principal
                return await read_body_and_run(request)
            except ServiceError as exc:
                headers = {"x-should-retry": "false"} if exc.status < 500 else None
                return envelope(exc.status, exc.code, exc.detail, headers=headers, state=exc.state)

        return authenticate_first


# Not in keel's OpenAPI document: the SDK's schema is the contract here, and its bodies (protobuf,
# the SDK's own JSON shapes) are not keel's wire types.
public = APIRouter(prefix="/tinker/api/v1", include_in_schema=False)
router = APIRouter(prefix="/tinker/api/v1", include_in_schema=False, route_class=TinkerRoute)


def _caller(request: Request) -> Principal:
    return request.state.principal


async def _parse(request: Request, model: type) -> Any:
    return service.parse(model, await request.body())


async def _call(request: Request, ctx: Ctx, model: type, fn: Callable, **options: Any) -> Any:
    """A JSON call: its body checked as `model`, then `fn(ctx, caller, request, **options)` off
    the event loop."""
    req = await _parse(request, model)
    return await run_in_threadpool(fn, ctx, _caller(request), req, **options)


@public.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.post("/client/config")
async def client_config(ctx: Ctx) -> dict:
    return service.client_config(ctx)


@router.post("/client/dynamic_config")
async def client_dynamic_config() -> dict:
    return {"refresh_interval_sec": 300, "sample_cancel_enabled": False}


@router.get("/get_server_capabilities")
async def get_server_capabilities() -> dict:
    return service.capabilities()


@router.post("/auth/token")
async def auth_token(request: Request) -> dict:
    """Only called when `pjwt_auth_enabled`, which keel never sets: the key is its own token."""
    return {"jwt": request.headers.get("x-api-key", "")}


@router.post("/telemetry")
async def telemetry() -> dict:
    return {"status": "accepted"}  # the SDK's telemetry is accepted and dropped


@router.post("/create_session")
async def create_session(request: Request, ctx: Ctx) -> dict:
    req = await _parse(request, wire.CreateSessionRequest)
    session_id = await run_in_threadpool(service.create_session, ctx, _caller(request), req)
    return {"type": "create_session", "session_id": session_id}


@router.post("/session_heartbeat")
async def session_heartbeat(request: Request, ctx: Ctx) -> dict:
    req = await _parse(request, wire.SessionHeartbeatRequest)
    await run_in_threadpool(service.heartbeat, ctx, _caller(request), req)
    return {"type": "session_heartbeat"}


@router.post("/sessions/{session_id}/finish")
async def finish_session(session_id: str, request: Request, ctx: Ctx) -> None:
    req = await _parse(request, wire.FinishSessionRequest)
    await run_in_threadpool(
        service.finish_session, ctx, _caller(request), session_id, req.reason.type
    )


@router.post("/create_model")
async def create_model(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.CreateModelRequest, service.create_model)


@router.post("/get_info")
async def get_info(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.ModelRequest, service.get_info)


@router.post("/unload_model")
async def unload_model(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.ModelRequest, service.submit_unload)


@router.post("/forward_backward")
async def forward_backward(request: Request, ctx: Ctx) -> dict:
    """forward (`forward_only`) and forward_backward: a protobuf body, zstd or not."""
    body = await request.body()
    encoding = request.headers.get("content-encoding")
    return await run_in_threadpool(
        service.submit_forward_backward, ctx, _caller(request), body, encoding
    )


@router.post("/optim_step")
async def optim_step(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.OptimStepRequest, service.submit_optim_step)


@router.post("/save_weights")
async def save_weights(request: Request, ctx: Ctx) -> dict:
    return await _call(
        request, ctx, wire.SaveWeightsRequest, service.submit_save, for_sampler=False
    )


@router.post("/save_weights_for_sampler")
async def save_weights_for_sampler(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.SaveWeightsRequest, service.submit_save, for_sampler=True)


@router.post("/load_weights")
async def load_weights(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.LoadWeightsRequest, service.submit_load)


@router.post("/create_sampling_session")
async def create_sampling_session(request: Request, ctx: Ctx) -> dict:
    req = await _parse(request, wire.CreateSamplingSessionRequest)
    session_id = await run_in_threadpool(
        service.create_sampling_session, ctx, _caller(request), req
    )
    return {"type": "create_sampling_session", "sampling_session_id": session_id}


@router.post("/asample")
async def asample(request: Request, ctx: Ctx) -> dict:
    return await _call(request, ctx, wire.SampleRequest, service.submit_sample)


@router.post("/retrieve_future")
async def retrieve_future(request: Request, ctx: Ctx) -> Response:
    req = await _parse(request, wire.FutureRetrieveRequest)
    want_proto = PROTO in request.headers.get("accept", "")
    answer = await tinker_futures.retrieve(
        ctx, _caller(request), req.request_id, want_proto=want_proto
    )
    if answer.proto is not None:
        return Response(answer.proto, media_type=PROTO)
    return JSONResponse(answer.body, status_code=answer.status)


# ---- the RestClient's training runs and checkpoints ----------------------------------------------


@router.get("/training_runs")
async def training_runs(
    request: Request,
    ctx: Ctx,
    limit: int = Query(20, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**31 - 1),
) -> dict:
    return await run_in_threadpool(
        tinker_runs.training_runs, ctx, _caller(request), offset=offset, limit=limit
    )


@router.get("/training_runs/{model_id}")
async def training_run(request: Request, ctx: Ctx, model_id: Id) -> dict:
    return await run_in_threadpool(tinker_runs.training_run, ctx, _caller(request), model_id)


@router.get("/training_runs/{model_id}/checkpoints")
async def checkpoints(request: Request, ctx: Ctx, model_id: Id) -> dict:
    return await run_in_threadpool(tinker_runs.checkpoints, ctx, _caller(request), model_id)


@router.delete("/training_runs/{model_id}/checkpoints/{checkpoint_id:path}")
async def delete_checkpoint(
    request: Request, ctx: Ctx, model_id: Id, checkpoint_id: str
) -> Response:
    """`checkpoint_id` is `<kind>/<name>`, as the SDK splits a tinker path."""
    await run_in_threadpool(
        tinker_runs.delete_checkpoint, ctx, _caller(request), model_id, checkpoint_id
    )
    return Response(status_code=204)


@router.get("/samplers/{sampling_session_id:path}")
async def get_sampler(sampling_session_id: str, request: Request, ctx: Ctx) -> dict:
    return await run_in_threadpool(service.get_sampler, ctx, _caller(request), sampling_session_id)


@router.post("/weights_info")
async def weights_info(request: Request, ctx: Ctx) -> dict:
    req = await _parse(request, wire.WeightsInfoRequest)
    return await run_in_threadpool(tinker_runs.weights_info, ctx, _caller(request), req.tinker_path)
