"""In-process Prometheus instruments of one API app: HTTP requests by route template and status,
and reward posts by outcome. They live on a registry of their own (not prometheus_client's global
one) so each app, and each test, counts from zero. Gauges read from the database at scrape time
are `keel_server.api.prometheus`'s; this module holds only what the process itself observes."""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

RewardOutcome = Literal["accepted", "duplicate", "conflicting", "rejected"]

# Seconds; the API answers most calls in milliseconds, a checkpoint download may take minutes.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keel_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keel_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rewards = Counter(
            "keel_reward_posts",
            "Rewards posted, per rollout: accepted (new), duplicate (same value again), "
            "conflicting (a different value, 409) or rejected (range, deadline, unknown rollout).",
            ["outcome"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def count_reward(self, outcome: RewardOutcome) -> None:
        self.rewards.labels(outcome).inc()
