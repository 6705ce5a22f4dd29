"""ASGI entry point: `uvicorn keel_server.main:app` (Settings from the KEEL_* environment)."""

from keel_server.api.app import create_app

app = create_app()
