"""`/v1/rollouts/{id}/reward` and `/v1/rewards` (batch): post rewards, idempotently."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from keel.types.rewards import RewardBatch, RewardBatchResult, RewardCreate, RewardResult
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx, Id
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import rewards as service

router = APIRouter(tags=["rewards"], route_class=AuthenticatedRoute, responses=ROUTE_ERRORS)


# `async def` with the database work in the thread pool: FastAPI validates a plain `def` route's
# return value in the thread pool as well, a second thread hop per post on the hottest route. (The
# batch stays a plain `def`: validating up to 10,000 results would hold up the event loop.)
@router.post("/rollouts/{rollout_id}/reward", response_model=RewardResult)
async def post_reward(rollout_id: Id, body: RewardCreate, ctx: Ctx, caller: Caller) -> RewardResult:
    return await run_in_threadpool(service.post, ctx, caller, rollout_id, body.value)


@router.post("/rewards", response_model=RewardBatchResult)
def post_rewards(body: RewardBatch, ctx: Ctx, caller: Caller) -> RewardBatchResult:
    return service.post_batch(ctx, caller, body)
