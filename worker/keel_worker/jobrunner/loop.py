"""The training loop of one service job, around `keel_worker.training.step.Trainer`.

It is `keel_worker.training.run.train` with what a job adds: prompts and rewards from the job's
sources (`prompts`, `rewards`), metrics and progress written to the database once per step,
checkpoints registered for download (with the job's retention policy applied after each,
`jobrunner.checkpoints`), and the cooperative stops of `control` checked between
phases. Order per step: metrics + progress in one transaction, the same metrics to the
TensorBoard / W&B trackers of `config.logging`, then the checkpoint. A crash in
between re-runs the step from the previous checkpoint and replaces its metric rows, so every
step appears exactly once.

A job that trained on nothing fails instead of succeeding: when its last step is done and the
policy version is still 0, no step kept a single complete reward group (every group had an
expired or unscored member), so no update ever ran (`TrainedOnNothing`).

The stability guard judges every completed step, in the transaction that writes its metrics, by
the policy `train()` runs too (`training.guard_policy`, here over the job's checkpoint rows; what
it leaves in the database: `jobrunner.guarding`). `pause` checkpoints the step just done and ends
the run `paused` with the trigger's reason; `rollback` restores the newest checkpoint of weights
that never breached (dropping the later ones and the rollouts of the abandoned steps), keeps the
prompt cursor where it is (the batches drawn since are skipped), scales the learning rate and runs
the steps from there again, replacing their metric rows. When a trigger may roll back, a new job
checkpoints once before its first step.

On rank 0 of a job's group (`config.distributed`) the loop is the same and does all the database
work; before each collective call (the step, the eval, a checkpoint, a rollback, a learning rate)
it tells the other ranks to make it too (`lead`, `jobrunner.follow`).

A pause or cancel seen inside a step (while waiting for prompts or rewards) abandons the step
before any update, so the state from before the step is exact: a pause checkpoints that state
(weights, optimizer, the cursor and RNG as they were when the step began), and the resumed job
re-runs the step, finding the rollouts and rewards already posted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.types import metric_names as metric
from keel.types.jobs import BuiltinReward, RewardSource, StoredPromptType, WebhookReward
from keel.types.training import TrainingConfig
from keel_server.db import SessionFactory, session_scope
from keel_server.db.checkpoints import list_checkpoints
from keel_server.db.jobs import (
    record_progress,
    record_routing_replay,
    record_runtime,
    record_serve_url,
)
from keel_server.db.metrics import write_step_metrics
from keel_server.db.rollouts import count_by_status
from keel_server.db.rollouts import delete_after as delete_rollouts_after
from keel_server.platform.model_access import ModelNotAllowed, resolve_job_model
from keel_server.platform.security import sealing_key, serve_secret
from keel_server.platform.settings import Settings
from keel_server.platform.storage import job_dir
from keel_worker.agents.server import PolicyServer
from keel_worker.engines.models import LoadedModel, load_model
from keel_worker.engines.precision import compute_report
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.jobrunner.agent_step import AgentStep, advertised_url
from keel_worker.jobrunner.checkpoints import (
    JobCheckpoints,
    apply_retention,
    guard_checkpoints,
    register_checkpoint_dir,
)
from keel_worker.jobrunner.control import JobControl, StopRun
from keel_worker.jobrunner.disk_space import NoSpaceLeft, no_space_reason
from keel_worker.jobrunner.episodes import EpisodeCalls
from keel_worker.jobrunner.follow import Lead
from keel_worker.jobrunner.guarding import JobGuard
from keel_worker.jobrunner.prompt_length import check_prompt_lengths
from keel_worker.jobrunner.prompts import make_prompt_source
from keel_worker.jobrunner.rewards import RewardContext, StepScorer, builtin_verifier
from keel_worker.jobrunner.spec import JobSpec
from keel_worker.training.checkpoint import capture_rng, checkpoint_dir
from keel_worker.training.evaluate import evaluate
from keel_worker.training.guard_policy import Decision
from keel_worker.training.schedule import StepSchedule
from keel_worker.training.session import TrainingSession
from keel_worker.training.tasks import Task, build_task
from keel_worker.training.trackers import StepTrackers

log = logging.getLogger(__name__)


class TrainedOnNothing(RuntimeError):
    """Every step of the job dropped all its groups: the model was never updated."""


@dataclass(frozen=True)
class _Resume:
    """Where a step starts from, captured before it draws prompts or random numbers."""

    step: int
    cursor: int
    rng: dict[str, Any]


class JobLoop:
    """Runs a job's remaining steps; `run()` returns the end state for `finish_job`."""

    def __init__(
        self,
        spec: JobSpec,
        settings: Settings,
        factory: SessionFactory,
        control: JobControl,
        *,
        lead: Lead | None = None,
    ) -> None:
        """`lead`: this loop runs on rank 0 of a job's group and tells the other ranks each
        collective call it makes (`jobrunner.follow`); None in a single process."""
        self.spec = spec
        self.lead = lead
        self.settings = settings
        self.factory = factory
        self.control = control
        self.workdir = job_dir(settings.artifacts_dir, spec.id)
        self.schedule = StepSchedule.of(spec.config)
        self.step_reached = 0
        self.replay_written: dict[str, Any] | None = None  # the job row's routing_replay
        self.end_reason: str | None = None  # why the run paused on its own (the guard)
        self.agent: AgentStep | None = None  # an agent job's episodes and policy server

    def run(self) -> str:
        """Train to `config.steps`; returns succeeded | paused | cancelled (lost: StopRun).
        Raises TrainedOnNothing when no step updated the model. A checkpoint that found its
        disk full pauses the job with the reason (`jobrunner.disk_space`)."""
        try:
            self._setup()
            try:
                return self._steps()
            finally:
                if self.agent is not None:
                    self.agent.server.close()
                self.trackers.close()
        except NoSpaceLeft as full:
            log.error("job %s: %s", self.spec.id, full)
            self.end_reason = str(full)
            return "paused"

    def _steps(self) -> str:
        cfg = self.spec.config
        step = self.step_reached
        while step < cfg.steps:
            before = _Resume(step, self.prompts.cursor, capture_rng())
            try:
                self.control.check()
                metrics = self._one_step(step)
            except StopRun as stop:
                return self._stop(stop, before)
            done = step + 1
            with session_scope(self.factory) as session:
                store = JobCheckpoints(session, self.spec.id)
                decision = self.guard.policy.decide(done, metrics, store)
                metrics.update(_reward_counts(session, self.spec.id, done))
                write_step_metrics(session, self.spec.id, done, metrics)
                record_progress(
                    session,
                    self.spec.id,
                    self.control.owner,
                    step=done,
                    policy_version=self.trainer.policy_version,
                )
                replay = self.trainer.auto.summary()
                if replay != self.replay_written:
                    record_routing_replay(session, self.spec.id, self.control.owner, replay)
                    self.replay_written = replay
                self.guard.record(store, self.control.owner, decision)
            self.trackers.log(done, metrics)
            self.step_reached = done
            if decision.action == "rollback":
                step = self._rollback(decision)
                continue
            if decision.action == "pause":
                self._checkpoint(done, self.prompts.cursor, capture_rng())
                self.end_reason = self.guard.summary.last_reason
                return "paused"
            if self.schedule.checkpoints_after(done):
                self._checkpoint(done, self.prompts.cursor, capture_rng())
            step = done
        # A cancel asked during the last step came after its last check: honour it, not
        # "succeeded" (the steps are done and checkpointed; a pause has nothing left to pause).
        self.control.beat()
        if self.control.stop_reason() == "cancel":
            return "cancelled"
        if self.trainer.policy_version == 0:
            raise TrainedOnNothing(
                f"trained on nothing: none of the {cfg.steps} steps kept a complete reward group "
                "(each group had an expired or unscored reward), so the model was never updated"
            )
        return "succeeded"

    # ------------------------------------------------------------------ guard rollback
    def _rollback(self, decision: Decision) -> int:
        """Carry out the policy's rollback, dropping the rollouts of the abandoned steps in the
        same transaction as their checkpoint rows; returns the step to run next."""
        policy = self.guard.policy
        with guard_checkpoints(self.factory, self.spec.id) as store:
            to_step = policy.roll_back(decision, store, restore=self._restore)
            delete_rollouts_after(store.session, self.spec.id, to_step)
            self.guard.rolled_back(store.session, self.control.owner, decision)
            record_progress(
                store.session,
                self.spec.id,
                self.control.owner,
                step=to_step,
                policy_version=self.trainer.policy_version,
            )
        self._set_lr(policy.lr(self.spec.config.optimizer.lr))
        log.warning(
            "job %s: guard rolled back to step %d (%s)",
            self.spec.id,
            to_step,
            decision.acted_on.reason,
        )
        self.step_reached = to_step
        return to_step

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, spec = self.spec.config, self.spec
        run = TrainingSession.open(
            cfg,
            workdir=self.workdir,
            cache_dir=self._model_cache(),
            load=self._load_model,
            vllm_options=VLLMOptions.from_settings(self.settings),
        )
        if run.resumed_from is not None:
            log.info("job %s: resuming from %s", spec.id, run.resumed_from)
        runtime = compute_report(
            rollout_engine=cfg.rollout.engine,
            precision=cfg.rollout.precision,
            train_dtype=cfg.train_dtype,
            train_device=str(next(run.model.parameters()).device),
        )
        log.info("job %s: compute %s", spec.id, runtime.model_dump_json())
        with session_scope(self.factory) as session:
            record_runtime(session, spec.id, self.control.owner, runtime.model_dump(mode="json"))
        self.run_state = run
        self.trainer, self.engine, self.tokenizer = run.trainer, run.engine, run.tokenizer
        self.task = task_or_none(cfg, spec.prompt_type, spec.reward_source)
        self.step_reached, cursor = run.step, run.data_cursor
        if run.resumed_from is not None:
            self._ensure_registered(run.resumed_from, run.step, run.trainer.policy_version)
        self.prompts = make_prompt_source(
            spec.prompt_type,
            task=self.task,
            seed=cfg.seed,
            cursor=cursor,
            factory=self.factory,
            job_id=spec.id,
            control=self.control,
            poll_interval_s=self.settings.prompt_poll_interval_s,
            max_wait_s=self.settings.max_prompt_wait_s,
        )
        source = spec.reward_source
        verifier = None
        if isinstance(source, BuiltinReward):
            verifier = builtin_verifier(source, self.task)
        self.rewards = RewardContext(
            factory=self.factory,
            settings=self.settings,
            control=self.control,
            job_id=spec.id,
            source=source,
            webhook_secret=spec.webhook_secret,
            verifier=verifier,
        )
        self.trackers = StepTrackers.open(
            cfg.logging, logdir=self.workdir, run_id=spec.id, config=cfg.model_dump(mode="json")
        )
        if spec.prompt_type == "agent":
            self.agent = self._serve_episodes(run)
        self.guard = JobGuard(cfg.guard, spec.guard, factory=self.factory, job_id=spec.id)
        self.guard.warm(self.step_reached)
        self._set_lr(self.guard.policy.lr(cfg.optimizer.lr))
        if run.resumed_from is None and self.guard.policy.checkpoints_first:
            self._checkpoint(0, self.prompts.cursor, capture_rng())

    def _serve_episodes(self, run: TrainingSession) -> AgentStep:
        """An agent job's policy server, its address recorded on the job for the API."""
        settings = self.settings
        server = PolicyServer(
            settings.serve_host,
            settings.serve_port,
            serve_secret(sealing_key(settings), self.spec.id),
            reply_timeout_s=settings.serve_timeout_s,
        )
        with session_scope(self.factory) as session:
            record_serve_url(
                session, self.spec.id, self.control.owner, advertised_url(server, settings)
            )
        calls = EpisodeCalls(
            engine=run.engine,
            tokenizer=run.tokenizer,
            config=self.spec.config,
            factory=self.factory,
            job_id=self.spec.id,
            max_context=run.model.config.max_position_embeddings,
        )
        return AgentStep(
            trainer=run.trainer,
            calls=calls,
            server=server,
            rewards=self.rewards,
            control=self.control,
            factory=self.factory,
            job_id=self.spec.id,
        )

    def _model_cache(self) -> Path:
        return model_cache(self.settings)

    def _load_model(self) -> LoadedModel:
        return load_job_model(self.spec, self.settings, self.factory)

    # ------------------------------------------------------------------ one step
    def _one_step(self, step: int) -> dict[str, float]:
        cfg, schedule = self.spec.config, self.schedule
        metrics: dict[str, float] = {}
        if self.task is not None and schedule.evaluates_before(step):
            metrics.update(self._evaluate())
        # A `client` prompt source waits up to max_prompt_wait_s, then pauses the job.
        self.control.progress(
            "prompts", bound_s=self.settings.max_prompt_wait_s + self.settings.stall_grace_s
        )
        items = self.prompts.take(cfg.prompts_per_step)
        self.control.progress("generate")
        if self.agent is not None:
            metrics.update(self.agent.run(step + 1, items, seed=schedule.seed_of(step)))
            return metrics
        check_prompt_lengths(
            items,
            self.tokenizer,
            context=self._context_tokens(),
            max_new_tokens=cfg.rollout.max_new_tokens,
        )
        self._tell("step", step, items)
        scorer = StepScorer(self.rewards, step=step + 1, policy_version=self.trainer.policy_version)
        metrics.update(
            self.trainer.step(
                items,
                scorer,
                seed=schedule.seed_of(step),
                drop_incomplete_groups=self.spec.reward_source.drop_incomplete_groups,
            )
        )
        if isinstance(self.spec.reward_source, WebhookReward):
            metrics[metric.WEBHOOK_DELIVERY_FAILURES] = float(scorer.delivery_failures)
        if self.task is not None and schedule.evaluates_after(step):
            metrics.update({f"{k}_final": v for k, v in self._evaluate().items()})
        return metrics

    def _context_tokens(self) -> int:
        """The longest prompt + answer the model serves (the vllm engine's own cap, if lower)."""
        context = self.run_state.model.config.max_position_embeddings
        cap = (
            self.settings.vllm_max_model_len if self.spec.config.rollout.engine == "vllm" else None
        )
        return min(context, cap) if cap is not None else context

    def _evaluate(self) -> dict[str, float]:
        assert self.task is not None
        self.control.progress("evaluate")
        self._tell("evaluate")
        return evaluate(self.engine, self.tokenizer, self.task, self.spec.config)

    # ------------------------------------------------------------------ stops and checkpoints
    def _stop(self, stop: StopRun, before: _Resume) -> str:
        if stop.reason == "lost":
            raise StopRun("lost")
        if stop.reason == "pause":
            # Pause checkpoints first: the state from before the abandoned step.
            self._checkpoint(before.step, before.cursor, before.rng)
            self.end_reason = stop.detail
            return "paused"
        return "cancelled"

    def _checkpoint(self, step: int, cursor: int, rng: dict[str, Any]) -> None:
        self.control.progress("checkpoint")
        self._tell("checkpoint", step, cursor, rng)
        try:
            path, state = self.run_state.save(
                step, data_cursor=cursor, rng=rng, summary={"job_id": self.spec.id}
            )
        except Exception as exc:
            reason = no_space_reason(
                exc,
                checkpoint_dir(self.workdir, step),
                artifacts_dir=Path(self.settings.artifacts_dir),
                step=step,
                model_bytes=_weight_bytes(self.run_state.model),
            )
            if reason is None:
                raise
            raise NoSpaceLeft(reason) from exc
        self._register(path, state.step, state.policy_version)
        keep_last = self.spec.config.checkpoint_keep_last
        if keep_last is not None:
            apply_retention(self.factory, self.spec.id, keep_last=keep_last)

    # ------------------------------------------------------------------ the group's collectives
    def _tell(self, kind: str, *args: Any) -> None:
        """Announce a collective call to the other ranks of the group (`jobrunner.follow`)."""
        if self.lead is not None:
            self.lead.tell(kind, *args)

    def _set_lr(self, lr: float) -> None:
        self._tell("lr", lr)
        self.run_state.set_lr(lr)

    def _restore(self, path: Path) -> Any:
        self._tell("restore", str(path))
        return self.run_state.restore(path)

    def _register(self, path: Path, step: int, policy_version: int) -> None:
        register_checkpoint_dir(
            self.factory, self.spec.id, path, step=step, policy_version=policy_version
        )

    def _ensure_registered(self, path: Path, step: int, policy_version: int) -> None:
        """A worker that died between saving and registering left a checkpoint the DB lacks."""
        with session_scope(self.factory) as session:
            rows = list_checkpoints(session, self.spec.id, after_step=step - 1, limit=1)
            known = bool(rows) and rows[0].step == step
        if not known:
            self._register(path, step, policy_version)


def model_cache(settings: Settings) -> Path:
    return Path(settings.home) / "models"


def load_job_model(spec: JobSpec, settings: Settings, factory: SessionFactory) -> LoadedModel:
    """The job's model under the same policy the API applied at creation (the settings may
    have changed since; a checkpoint must still be this project's and still have its files); a
    refused or unloadable model fails the job without naming paths."""
    model = spec.config.model
    with session_scope(factory) as session:
        source = resolve_job_model(model, settings, session, spec.project_id)
    try:
        return load_model(
            source.spec,
            cache_dir=model_cache(settings),
            local_paths=source.kind in ("local", "checkpoint"),
        )
    except Exception as exc:
        log.exception("job %s: loading model %r failed", spec.id, model.label)
        raise ModelNotAllowed(model.label) from exc


def task_or_none(
    cfg: TrainingConfig, prompt_type: StoredPromptType, reward_source: RewardSource
) -> Task | None:
    """The built-in task, when the job draws prompts or rewards from it."""
    uses_task = prompt_type == "task" or (
        isinstance(reward_source, BuiltinReward) and reward_source.verifier == "task"
    )
    return build_task(cfg.task) if uses_task else None


def _reward_counts(session, job_id: str, step: int) -> dict[str, float]:
    counts = count_by_status(session, job_id, step)
    return {
        metric.REWARDS_REWARDED: float(counts.get("rewarded", 0)),
        metric.REWARDS_EXPIRED: float(counts.get("expired", 0)),
    }


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
