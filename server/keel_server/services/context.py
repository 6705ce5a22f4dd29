"""What every service call needs: the process's Settings, the session factory, the Celery
producer, the process's Prometheus instruments, and who is calling (a `Principal`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from keel_server.db import SessionFactory, make_engine, make_session_factory
from keel_server.queue import make_producer
from keel_server.settings import Settings
from keel_server.telemetry import Telemetry


@dataclass(frozen=True)
class ServiceContext:
    settings: Settings
    sessions: SessionFactory
    producer: Celery
    telemetry: Telemetry = field(default_factory=Telemetry)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceContext:
        engine = make_engine(settings.database_url)
        return cls(settings, make_session_factory(engine), make_producer(settings))

    def close(self) -> None:
        engine = self.sessions.kw.get("bind")
        if engine is not None:
            engine.dispose()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `job_id` is set for a reward token, which may only list its job's
    pending rollouts and post their rewards."""

    project_id: str
    is_admin: bool = False
    job_id: str | None = None

    @property
    def is_reward_token(self) -> bool:
        return self.job_id is not None
