"""Liveness as progress: the phase a job's worker last entered, when, and whether it overran.

A heartbeat thread proves only that the process is scheduled, not that the job moves: a step
stuck in a call that never returns keeps renewing its lease. So the job loop reports each phase it
enters (`ProgressClock.enter`), the heartbeat stores the latest on the job row, and
`ProgressClock.overrun` tells the heartbeat when the current phase has run past its bound:
`Settings.phase_timeout_s(phase)`, or, for a wait with its own deadline (rewards, prompts), that
deadline plus `Settings.stall_grace_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from keel_server.db import utcnow


@dataclass(frozen=True)
class Progress:
    """One report: the phase entered, when (wall clock and monotonic), its bound in seconds."""

    phase: str
    at: datetime
    at_monotonic: float
    bound_s: float


class ProgressClock:
    """The loop writes, the heartbeat thread reads; a lock keeps each report whole."""

    def __init__(self, bound_of: Callable[[str], float], *, phase: str = "load") -> None:
        self._bound_of = bound_of
        self._lock = threading.Lock()
        self._last = self._report(phase, None)

    def enter(self, phase: str, *, bound_s: float | None = None) -> None:
        """Report progress: the loop enters `phase`, which may take up to `bound_s` (default
        the phase's configured bound)."""
        report = self._report(phase, bound_s)
        with self._lock:
            self._last = report

    @property
    def last(self) -> Progress:
        with self._lock:
            return self._last

    def overrun(self, now_monotonic: float | None = None) -> Progress | None:
        """The last report when its phase has run past its bound, else None."""
        last = self.last
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return last if now - last.at_monotonic > last.bound_s else None

    def _report(self, phase: str, bound_s: float | None) -> Progress:
        bound = self._bound_of(phase) if bound_s is None else bound_s
        return Progress(phase, utcnow(), time.monotonic(), bound)


def stuck_reason(progress: Progress, step: int) -> str:
    """The error a stuck job ends with: the phase, its bound, and the last progress."""
    return (
        f"stuck: no progress for {progress.bound_s:g} s in phase '{progress.phase}' (its bound; "
        f"KEEL_PROGRESS_TIMEOUT_S / KEEL_PHASE_TIMEOUTS_S); last progress at "
        f"{progress.at.isoformat(timespec='seconds')} after step {step}; the worker process "
        "was stopped and replaced"
    )
