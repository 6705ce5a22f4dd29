"""In-process Prometheus instruments of one API app: HTTP requests by route template and status,
and reward posts by outcome. They live on a registry of their own (not prometheus_client's global
one) so each app, and each test, counts from zero. Gauges read from the database at scrape time
are `keel_server.api.prometheus`'s; this module holds only what the process itself observes.

Several API processes (`keel server --workers N`) count together: `keel server` gives them one
folder in prometheus_client's own variable `PROMETHEUS_MULTIPROC_DIR`, where each process's
counts live in files of its own, and a scrape, whichever process answers it, adds them all up
(prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

RewardOutcome = Literal["accepted", "duplicate", "conflicting", "rejected"]

# Seconds; the API answers most calls in milliseconds, a checkpoint download may take minutes.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


# prometheus_client reads it when it is imported and then keeps every count in that folder.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._scraped = self.registry
        shared_dir = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
        if shared_dir:
            self._scraped = CollectorRegistry()
            MultiProcessCollector(self._scraped, path=shared_dir)
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

    def exposition(self) -> bytes:
        """The counts in Prometheus's text format: this process's, or with several API
        processes all of theirs."""
        return generate_latest(self._scraped)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def count_reward(self, outcome: RewardOutcome) -> None:
        self.rewards.labels(outcome).inc()
