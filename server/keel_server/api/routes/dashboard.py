"""`/dashboard`: the web dashboard, a static page and one script over the /v1 JSON API (the files
in `keel_server/api/dashboard/`). Serving them needs no key: they hold no data; the script signs
in with an API key and the /v1 routes decide what it may see. Not part of the OpenAPI schema."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from keel_server.services.errors import not_found

router = APIRouter(include_in_schema=False)
FILES = Path(__file__).resolve().parents[1] / "dashboard"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# no-cache: a browser revalidates, so an upgraded server never runs an old script. The page runs
# its one script and stylesheet and talks to this origin only: the policy forbids inline script,
# any other origin and being framed (clickjacking), so an injected string can do nothing.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data: blob:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/dashboard")
def page() -> FileResponse:
    return FileResponse(FILES / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/dashboard/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise not_found("dashboard file", name)
    return FileResponse(FILES / name, media_type=ASSETS[name], headers=HEADERS)
