"""The server extra installs uvloop and httptools, and uvicorn (`keel server`, `keel up`) runs
on them: it picks them itself when they are importable and falls back to asyncio and h11 without
a word when they are not, so this checks its pick."""

from __future__ import annotations

from uvicorn.loops.auto import auto_loop_factory
from uvicorn.protocols.http.auto import AutoHTTPProtocol


def test_uvicorn_parses_http_with_httptools() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert AutoHTTPProtocol is HttpToolsProtocol


def test_uvicorn_runs_the_uvloop_event_loop() -> None:
    import uvloop

    assert auto_loop_factory() is uvloop.new_event_loop
