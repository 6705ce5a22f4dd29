"""Persistence: SQLAlchemy models and the only module tree that issues SQL.

Submodules by concept: `models`, `session` (engines, `session_scope`, `statement_scope`), `jobs`
(state machine and lease), `prompts`, `rollouts` (reward life cycle), `episodes` (agent episodes:
claims, turns), `metrics`, `checkpoints`, `keys`, `events`.
The worker imports these directly; the API reaches them through `keel_server.services`.
"""

from keel_server.db.base import Base, new_id, utcnow
from keel_server.db.session import (
    SessionFactory,
    make_engine,
    make_session_factory,
    session_scope,
    statement_scope,
)

__all__ = [
    "Base",
    "SessionFactory",
    "make_engine",
    "make_session_factory",
    "new_id",
    "session_scope",
    "statement_scope",
    "utcnow",
]
