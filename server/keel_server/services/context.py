"""What every service call needs: the process's Settings, the session factory, the Celery
producer, the process's Prometheus instruments, and who is calling (a `Principal`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from celery import Celery

from keel_server.db import SessionFactory, make_engine, make_session_factory
from keel_server.platform.leases import LeaseReaper, start_reaper
from keel_server.platform.queue import make_producer
from keel_server.platform.settings import Settings, api_process_connections
from keel_server.platform.telemetry import Telemetry
from keel_server.services.streams import StreamRegistry


@dataclass(frozen=True)
class ServiceContext:
    settings: Settings
    sessions: SessionFactory
    producer: Celery
    telemetry: Telemetry = field(default_factory=Telemetry)
    reward_tokens: RewardTokenCache = field(default_factory=lambda: RewardTokenCache())
    streams: StreamRegistry = field(default_factory=StreamRegistry)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceContext:
        engine = make_engine(
            settings.database_url, max_connections=api_process_connections(settings)
        )
        return cls(settings, make_session_factory(engine), make_producer(settings))

    def start_reaper(self) -> LeaseReaper:
        """This process's lease reaper: a job whose worker died is re-enqueued even when no
        worker is left to notice. The caller stops it (`LeaseReaper.stop`) when it stops serving."""
        return start_reaper(self.sessions, self.producer, self.settings)

    def close(self) -> None:
        engine = self.sessions.kw.get("bind")
        if engine is not None:
            engine.dispose()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `job_id` is set for a reward token, which may only list its job's
    pending rollouts and post their rewards, and for an agent episode's key, which `episode_id`
    narrows further: that episode's model calls and its reward."""

    project_id: str
    is_admin: bool = False
    job_id: str | None = None
    episode_id: str | None = None
    key_id: str | None = None  # the API key's row (None: admin key, reward token, episode key)

    @property
    def owner(self) -> str:
        """Who holds what this caller opens (its event streams): one name per key."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        if self.is_admin:
            return "admin"
        if self.episode_id is not None:
            return f"episode:{self.episode_id}"
        return f"job:{self.job_id}"

    @property
    def is_reward_token(self) -> bool:
        return self.job_id is not None


class RewardTokenCache:
    """The principals of reward tokens this process has verified, by the token's sha256.

    A job's reward token is drawn when the job is created and never changes, and jobs are never
    deleted, so a token once found names the same (project, job) for good: remembering it saves
    a query on every reward post without changing who may post what. Nothing else about the job
    is taken from here (each route reads the job it acts on), an unknown token is never
    remembered, and API keys, which can be revoked, are not cached at all. Bounded: the least
    recently used entries go first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[str, Principal] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Principal | None:
        with self._lock:
            principal = self._entries.get(token_hash)
            if principal is not None:
                self._entries.move_to_end(token_hash)
            return principal

    def put(self, token_hash: str, principal: Principal) -> None:
        with self._lock:
            self._entries[token_hash] = principal
            self._entries.move_to_end(token_hash)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
