"""`/v1/jobs/{id}/episodes/claim` and `/v1/episodes/{id}`: an agent harness takes episodes to run;
anyone of the project reads one back with its turns."""

from __future__ import annotations

from fastapi import APIRouter, Request

from keel.types.agents import EpisodeClaim, EpisodeClaimed, EpisodeDetail
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx, Id
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import episodes as service

router = APIRouter(tags=["episodes"], route_class=AuthenticatedRoute, responses=ROUTE_ERRORS)


@router.post("/jobs/{job_id}/episodes/claim", response_model=EpisodeClaimed)
def claim_episodes(
    job_id: Id, body: EpisodeClaim, request: Request, ctx: Ctx, caller: Caller
) -> EpisodeClaimed:
    base_url = service.public_base_url(ctx, str(request.base_url))
    return service.claim(ctx, caller, job_id, body, base_url=base_url)


@router.get("/episodes/{episode_id}", response_model=EpisodeDetail)
def retrieve_episode(episode_id: Id, request: Request, ctx: Ctx, caller: Caller) -> EpisodeDetail:
    base_url = service.public_base_url(ctx, str(request.base_url))
    return service.retrieve(ctx, caller, episode_id, base_url=base_url)
