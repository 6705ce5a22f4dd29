"""FastAPI dependencies: the service context of the app and the authenticated principal.

The principal is authenticated by `keel_server.api.authenticated.AuthenticatedRoute` before the body
is read; `Caller` hands it to the route and declares the bearer scheme in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from keel.types.common import MAX_INT
from keel_server.services.context import Principal, ServiceContext

_NO_NUL = r"^[^\x00]*$"

bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`keel_sk_…`), the admin key, or a job's reward token (`keel_rt_…`).",
)


# Both are `async def`: they only read the request, and FastAPI runs a plain `def` dependency in
# the thread pool, a thread hop per dependency per request.
async def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


async def get_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return request.state.principal


Ctx = Annotated[ServiceContext, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(get_principal)]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=_NO_NUL)
]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)]
# Path and query values reach SQL: bounded, NUL-free, integers within the INTEGER columns.
Id = Annotated[str, Path(max_length=40, pattern=_NO_NUL)]
# A cursor is what the list returned before, in the list's own format (services.paging): the
# schema says exactly that, so a client validating against it is refused nothing the server takes.
JobCursor = Annotated[str | None, Query(max_length=40, pattern=r"^job_[0-9a-f]{24}$")]
Cursor = Annotated[str | None, Query(max_length=10, pattern=r"^[0-9]{1,10}$")]
RolloutCursor = Annotated[
    str | None, Query(max_length=32, pattern=r"^[0-9]{1,10}\.[0-9]{1,10}\.[0-9]{1,10}$")
]
Step = Annotated[int | None, Query(ge=0, le=MAX_INT)]
# Its maximum in the OpenAPI document is the server's `KEEL_PAGE_SIZE_MAX` (api.app).
Limit = Annotated[int | None, Query(ge=1, le=MAX_INT)]
