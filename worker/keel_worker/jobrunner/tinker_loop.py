"""A Tinker model's run: the model stays resident in this worker and executes the job's queued
calls (`keel_server.db.tinker`) one at a time, numbered calls strictly in `seq_id` order.

What a client sees depends on the order alone: gradients accumulate across forward_backward
calls (and the SDK's chunks of one call) until optim_step, so a call may only run once every call
numbered before it has. Unnumbered calls (sampling) run in arrival order between them. A missing
`seq_id` holds the calls behind it for `tinker_seq_gap_s`, then fails them.

Each optim_step is a step of the job: its metrics (the losses and keel's mismatch / IS / clip
numbers of the forward_backward calls since the last step) and progress are written like any
job's, so the dashboard draws the run. A named `save_weights` is also a checkpoint of the job
(its downloads work like any job's).

Only the training since the last save lives in memory alone: a worker that dies fails the calls
it had open, and the next worker reloads the newest `save_weights` (weights and optimizer) and says
so in those calls' errors. The run ends with `unload_model` (succeeded), a cancel or pause
(open calls fail with that reason), the end of its SDK session (no heartbeat for
`tinker_session_timeout_s`: succeeded; the SDK never unloads a model, it stops beating), or
`tinker_idle_timeout_s` with no call. A pause (asked for, or idle) saves the whole state first
(`keel-resume`), so the model's next call, which resumes it, continues exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from keel_server.db import SessionFactory, session_scope
from keel_server.db import tinker as queue
from keel_server.db.base import utcnow
from keel_server.db.jobs import get_job, record_progress
from keel_server.db.metrics import write_step_metrics
from keel_server.db.models import TinkerRequest
from keel_server.platform.settings import Settings
from keel_server.platform.storage import job_dir
from keel_worker.jobrunner.checkpoints import register_checkpoint_dir
from keel_worker.jobrunner.control import JobControl, StopRun
from keel_worker.jobrunner.loop import load_job_model
from keel_worker.jobrunner.spec import JobSpec
from keel_worker.jobrunner.tinker_calls import CallError, TinkerCalls
from keel_worker.tinker.resident import ResidentModel

log = logging.getLogger(__name__)

# Why the calls still open when a run ends fail, by the run's end state.
_ENDED = {
    "paused": "the model's job was paused; resume it and send the call again",
    "cancelled": "the model's job was cancelled",
    "succeeded": "the model was unloaded",
}


@dataclass
class _Order:
    """Which numbered call may run next, and since when a later one waits for it."""

    expected: int
    gap_since: object | None = None  # created_at of the first call waiting behind a gap


@dataclass
class _Window:
    """The forward_backward metrics since the last optim_step, as one step's metrics under
    keel's names: each call's metric carries the SDK's reduction suffix (`loss:sum`,
    `mismatch/kl_k3:mean`, `is/weight_max:max`), which says how the calls combine (a mean over
    the calls, each a chunk of about equal size)."""

    values: dict[str, list[float]] = field(default_factory=dict)
    calls: int = 0

    def add(self, metrics: dict[str, float]) -> None:
        self.calls += 1
        for name, value in metrics.items():
            self.values.setdefault(name, []).append(float(value))

    def drain(self) -> dict[str, float]:
        out = {"tinker/forward_backward_calls": float(self.calls)}
        for name, values in self.values.items():
            base, _, reduction = name.rpartition(":")
            combine = _REDUCTIONS.get(reduction)
            if base and combine is not None:
                out[base] = combine(values)
        self.values, self.calls = {}, 0
        return out


_REDUCTIONS = {
    "sum": sum,
    "mean": lambda values: sum(values) / len(values),
    "max": max,
    "min": min,
}


class TinkerLoop:
    """Serves a Tinker model's calls; `run()` returns the end state for `finish_job`."""

    def __init__(
        self, spec: JobSpec, settings: Settings, factory: SessionFactory, control: JobControl
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.factory = factory
        self.control = control
        self.workdir = job_dir(settings.artifacts_dir, spec.id)
        self.step_reached = 0
        self.end_reason: str | None = None
        self.window = _Window()

    def run(self) -> str:
        outcome = "failed"
        try:
            self._setup()
            outcome = self._serve()
            return outcome
        except StopRun:
            outcome = "lost"
            raise
        finally:
            if outcome != "lost":  # a new holder owns the calls now
                self._fail_open(outcome)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.spec.config
        lora_rank = cfg.lora.rank if cfg.lora is not None else None
        loaded = load_job_model(self.spec, self.settings, self.factory)
        self.model = ResidentModel.create(loaded, lora_rank=lora_rank, seed=cfg.seed)
        log.info("job %s: resident on %d torch threads", self.spec.id, torch.get_num_threads())
        self.calls = TinkerCalls(
            model=self.model,
            factory=self.factory,
            job_id=self.spec.id,
            workdir=self.workdir,
            register=self._register,
        )
        reloaded = self.calls.reload_latest()
        with session_scope(self.factory) as session:
            changed = queue.last_change_at(session, self.spec.id)
            # The training since the newest save was in the memory of a worker that stopped:
            # the calls sent after it would run on other weights than their sender's.
            lost = queue.was_interrupted(session, self.spec.id) or (
                changed is not None and (reloaded is None or changed > reloaded.created_at)
            )
            if lost:
                origin = (
                    f"its last save tinker://{self.spec.id}/weights/{reloaded.name}"
                    if reloaded is not None
                    else "its base weights (it was never saved)"
                )
                failed = queue.fail_open(
                    session,
                    self.spec.id,
                    f"the worker serving this model stopped; the model was reloaded from "
                    f"{origin}: load the state you want and send the calls again",
                )
                log.warning("job %s: state lost; failed %d open calls", self.spec.id, failed)
        if lost:  # the state from here is the reloaded one: a later restart must not fail again
            self.calls.save_for_resume()
        with session_scope(self.factory) as session:
            last = queue.last_finished_seq(session, self.spec.id)
            job = get_job(session, self.spec.id)
            self.session_id = (job.prompt_source or {}).get("session_id") if job else None
            self.step_reached = job.step if job else 0
        self._session_checked = 0.0
        self.order = _Order(expected=last + 1 if last is not None else 0)

    # ------------------------------------------------------------------ the queue
    def _serve(self) -> str:
        idle_since = time.monotonic()
        while True:
            try:
                self.control.check()
            except StopRun as stop:
                if stop.reason == "lost":
                    raise
                if stop.reason == "pause":
                    self.calls.save_for_resume()
                    return "paused"
                return "cancelled"
            if self._session_ended():
                self.end_reason = (
                    "its Tinker session was closed, or sent no heartbeat for "
                    f"{self.settings.tinker_session_timeout_s:g} s"
                )
                return "succeeded"
            # Waiting for calls is progress: an idle model is bounded by its idle timeout.
            self.control.progress("calls")
            row = self._next()
            if row is None:
                if time.monotonic() - idle_since > self.settings.tinker_idle_timeout_s:
                    self.end_reason = (
                        f"no call for {self.settings.tinker_idle_timeout_s:g} s: the model was "
                        "unloaded after saving its state; its next call loads it again"
                    )
                    self.calls.save_for_resume()
                    return "paused"
                time.sleep(self.settings.tinker_poll_interval_s)
                continue
            self._execute(row)
            idle_since = time.monotonic()
            if row.kind == "unload_model":
                return "succeeded"

    def _session_ended(self) -> bool:
        """Checked once a second: the SDK never unloads a model, it stops its heartbeats."""
        now = time.monotonic()
        if self.session_id is None or now - self._session_checked < 1.0:
            return False
        self._session_checked = now
        with session_scope(self.factory) as session:
            row = queue.get_session(session, self.session_id)
            if row is None or row.finished_at is not None:
                return True
            silent = (utcnow() - row.heartbeat_at).total_seconds()
        return silent > self.settings.tinker_session_timeout_s

    def _next(self) -> TinkerRequest | None:
        """The call to run now: the expected numbered one or the oldest unnumbered one,
        whichever came first; None while the next numbered call is missing."""
        with session_scope(self.factory) as session:
            rows = queue.queued(session, self.spec.id)
            numbered = [r for r in rows if r.seq_id is not None]
            unnumbered = [r for r in rows if r.seq_id is None]
            ready = None
            if numbered:
                head = numbered[0]
                if self.order.expected == 0 and head.seq_id > 0:
                    self.order.expected = min(head.seq_id, 1)  # no create-via-load call: from 1
                if head.seq_id < self.order.expected:
                    queue.fail(
                        session,
                        head.id,
                        f"seq_id {head.seq_id} comes after seq_id {self.order.expected - 1} "
                        "already ran: calls must be numbered in the order they are sent",
                    )
                    return None
                if head.seq_id == self.order.expected:
                    ready, self.order.gap_since = head, None
                else:
                    self.order.gap_since = self.order.gap_since or head.created_at
                    queue.fail_after_gap(
                        session,
                        self.spec.id,
                        missing_seq=self.order.expected,
                        waited_since=self.order.gap_since,
                        bound_s=self.settings.tinker_seq_gap_s,
                    )
            if unnumbered and (ready is None or unnumbered[0].created_at < ready.created_at):
                ready = unnumbered[0]
            if ready is None or not queue.start(session, ready.id):
                return None
            session.refresh(ready, ["payload"])  # `queued` deferred the bodies
            session.expunge(ready)
            return ready

    def _execute(self, row: TinkerRequest) -> None:
        started = time.perf_counter()
        try:
            result, metrics = self.calls.run(row)
        except CallError as exc:
            self._finish(row, error=str(exc), category="user")
        except Exception as exc:
            log.exception("job %s: %s (seq_id %s) failed", self.spec.id, row.kind, row.seq_id)
            self._finish(row, error=f"{type(exc).__name__}: {exc}", category="server")
        else:
            if row.kind == "forward_backward":  # a forward alone (an evaluation) trains nothing
                self.window.add(metrics)
            self._finish(row, result=result, step_metrics=metrics)
        log.debug("job %s: %s in %.3f s", self.spec.id, row.kind, time.perf_counter() - started)

    def _finish(
        self,
        row: TinkerRequest,
        *,
        result: dict | None = None,
        error: str | None = None,
        category: str = "user",
        step_metrics: dict[str, float] | None = None,
    ) -> None:
        with session_scope(self.factory) as session:
            if error is not None:
                queue.fail(session, row.id, error, category=category)
            else:
                queue.finish(session, row.id, result or {})
            if row.seq_id is not None:
                self.order.expected = row.seq_id + 1
            if error is None and row.kind == "optim_step":
                # A step counts every optim_step, also one skipped for a non-finite gradient
                # (the policy version counts the updates applied).
                step = self.step_reached + 1
                metrics = {**self.window.drain(), **(step_metrics or {})}
                write_step_metrics(session, self.spec.id, step, metrics)
                record_progress(
                    session,
                    self.spec.id,
                    self.control.owner,
                    step=step,
                    policy_version=self.model.version,
                )
                self.step_reached = step

    def _register(self, path: Path, version: int) -> str:
        return register_checkpoint_dir(
            self.factory, self.spec.id, path, step=version, policy_version=version
        )

    def _fail_open(self, outcome: str) -> None:
        reason = _ENDED.get(outcome, f"the model's job ended ({outcome})")
        try:
            with session_scope(self.factory) as session:
                queue.fail_open(session, self.spec.id, reason)
        except Exception:  # the run's own end state matters more; the next worker fails them
            log.exception("job %s: could not fail the open calls", self.spec.id)
