"""One step of an agent job (docs/concepts/agents.md): open B × G episodes, serve their model
calls until each is rewarded or expired, then train on their token-exact sequences.

    open      one rollout row per episode (group = task of the step, sample = which of the G),
              or the rows an earlier run of the step left (a resume keeps their turns and rewards)
    serve     the policy server's calls are answered in batches (`jobrunner.episodes`) on this
              thread; between batches the step polls the rewards and the job's control
    build     each episode's turns become its sequences (`agents.trajectory.training_sequences`):
              sampled tokens train, context tokens (prompt, tool results, user turns) do not
    learn     advantages per group of G episodes (an episode's reward is its sequences'), then
              the trainer's update phases (`Trainer.learn`)

No weight update happens while an episode of the step is open: every turn is sampled by the
policy version the step trains from (`agent/version_lag_max` reports the gap, 0 here).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from datetime import timedelta

import torch

from keel.types import metric_names as metric
from keel.types.training import TaskItem
from keel_server.db import SessionFactory, session_scope, utcnow
from keel_server.db import episodes as episodes_db
from keel_server.db.models import EpisodeTurn
from keel_server.db.models import Rollout as RolloutRow
from keel_server.db.rollouts import (
    NewRollout,
    count_by_status,
    expire_due,
    record_rollouts,
    step_rollouts,
)
from keel_server.platform.settings import Settings
from keel_worker.agents.server import PolicyServer
from keel_worker.agents.trajectory import training_sequences
from keel_worker.engines.base import RolloutBatch
from keel_worker.jobrunner.control import JobControl
from keel_worker.jobrunner.episodes import EpisodeCalls
from keel_worker.jobrunner.rewards import RewardContext, RewardWaitExceeded
from keel_worker.training.metrics import MetricSink
from keel_worker.training.scoring import group_advantages, scored_groups
from keel_worker.training.step import Trainer

log = logging.getLogger(__name__)

MAX_CALLS_PER_BATCH = 256


class AgentStep:
    """Runs the steps of one agent job with its trainer, behind its policy server."""

    def __init__(
        self,
        *,
        trainer: Trainer,
        calls: EpisodeCalls,
        server: PolicyServer,
        rewards: RewardContext,
        control: JobControl,
        factory: SessionFactory,
        job_id: str,
    ) -> None:
        self.trainer, self.calls, self.server = trainer, calls, server
        self.rewards, self.control = rewards, control
        self.factory, self.job_id = factory, job_id

    def run(self, step: int, items: Sequence[TaskItem], *, seed: int) -> dict[str, float]:
        """Step `step` (1-based) on the tasks `items`; returns its metrics."""
        cfg = self.trainer.config
        sink = MetricSink()
        t0 = time.perf_counter()
        rows = self._open(step, items)
        # Episodes are served until each is rewarded or expires at its deadline.
        settings = self.rewards.settings
        self.control.progress("rewards", bound_s=self.rewards.deadline_s + settings.stall_grace_s)
        self.calls.policy_version = self.trainer.policy_version
        with session_scope(self.factory) as session:
            self.calls.open(episodes_db.step_turns(session, [r.id for r in rows]))
        self._serve_until_scored(step)
        sink.time(metric.TIME_GENERATE, t0)
        self.control.progress("update")

        with session_scope(self.factory) as session:
            rows = step_rollouts(session, self.job_id, step)
            turns = episodes_db.step_turns(session, [r.id for r in rows])
            rewards = [r.reward if r.status == "rewarded" else None for r in rows]
        groups = scored_groups(
            rewards,
            cfg.group_size,
            keep_partial=not self.rewards.source.drop_incomplete_groups,
        )
        routes = self.calls.routes if self.trainer.replay is not None else None
        batch, episode_of_row = _sequences(rows, turns, routes)
        _episode_metrics(sink, rewards, groups, rows, turns, self.trainer.policy_version)
        kept, advantages_E = group_advantages(
            rewards, groups, group_size=cfg.group_size, mode=cfg.algorithm.advantage, sink=sink
        )
        kept_episodes = set(kept)
        trained = [r for r, e in enumerate(episode_of_row) if e in kept_episodes]
        # No update when no group kept, or when its episodes made no model call.
        if trained:
            advantages_R = advantages_E[torch.tensor(episode_of_row, dtype=torch.long)]
            self.trainer.learn(batch, advantages_R, trained, seed=seed, sink=sink)
        return self.trainer.finish_step(sink)

    # ------------------------------------------------------------------ phases
    def _open(self, step: int, items: Sequence[TaskItem]) -> list[RolloutRow]:
        """The step's episodes: new rows, or those an earlier run of the step stored."""
        G = self.trainer.config.group_size
        with session_scope(self.factory) as session:
            existing = step_rollouts(session, self.job_id, step)
            if existing:
                return existing
            episodes = [
                NewRollout(
                    group_index=g,
                    sample_index=s,
                    prompt=item.prompt,
                    completion="",
                    token_count=0,
                )
                for g, item in enumerate(items)
                for s in range(G)
            ]
            return record_rollouts(
                session,
                self.job_id,
                step=step,
                policy_version=self.trainer.policy_version,
                deadline_at=utcnow() + timedelta(seconds=self.rewards.deadline_s),
                rollouts=episodes,
            )

    def _serve_until_scored(self, step: int) -> None:
        """Answer calls until no episode of the step awaits its reward (each rewarded or
        expired); the rewards and the job's control are checked every poll interval."""
        settings = self.rewards.settings
        poll_s = settings.reward_poll_interval_s
        started = time.monotonic()
        next_check = started
        while True:
            calls = self.server.take(timeout_s=poll_s, max_calls=MAX_CALLS_PER_BATCH)
            if calls:
                self.calls.serve(calls)
            now = time.monotonic()
            if now < next_check:
                continue
            next_check = now + poll_s
            self.control.check()
            with session_scope(self.factory) as session:
                expire_due(session, self.job_id, step=step)
                if count_by_status(session, self.job_id, step).get("awaiting_reward", 0) == 0:
                    break
            waited = self.rewards.waited_s + (now - started)
            if waited > settings.max_reward_wait_s:
                raise RewardWaitExceeded(
                    f"the job waited {waited:.0f} s for its episodes' rewards in total, over "
                    f"the operator's cap of {settings.max_reward_wait_s:g} s "
                    "(KEEL_MAX_REWARD_WAIT_S)"
                )
        self.rewards.waited_s += time.monotonic() - started


def _sequences(
    rows: list[RolloutRow],
    turns: dict[str, list[EpisodeTurn]],
    routes: dict[tuple[str, int], torch.Tensor] | None,
) -> tuple[RolloutBatch, list[int]]:
    """The step's training sequences as one batch, and the episode (row index) of each.

    `routes` (MoE policies): the engine's routes of each sequence, which R3 replays and `auto`
    measures with. A sequence whose routes this worker does not hold (its turns were sampled
    before a restart) is left out of the update rather than trained without them."""
    prompt_ids, response_ids, logprobs, masks, finishes, episode_of_row = [], [], [], [], [], []
    kept_routes = []
    for e, row in enumerate(rows):
        for seq in training_sequences(turns[row.id]):
            if routes is not None:
                if (row.id, seq.sequence_index) not in routes:
                    log.warning(
                        "episode %s: sequence %d has no routes here", row.id, seq.sequence_index
                    )
                    continue
                kept_routes.append(routes[(row.id, seq.sequence_index)])
            prompt_ids.append(seq.prompt_ids)
            response_ids.append(seq.response_ids)
            logprobs.append(torch.tensor(seq.logprobs, dtype=torch.float32))
            masks.append(torch.tensor(seq.trained_mask, dtype=torch.bool))
            finishes.append(seq.finish_reason)
            episode_of_row.append(e)
    batch = RolloutBatch(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        rollout_logprobs=logprobs,
        finish_reasons=finishes,
        routes=kept_routes if routes is not None else None,
        prompt_index=[rows[e].group_index for e in episode_of_row],
        trained_masks=masks,
    )
    return batch, episode_of_row


def _episode_metrics(sink, rewards, groups, rows, turns, policy_version: int) -> None:
    scored = [r for r in rewards if r is not None]
    ran = [turns[row.id] for row in rows if turns[row.id]]
    sampled = [sum(len(t.sampled_ids) for t in ts) for ts in ran]
    every_turn = [t for ts in ran for t in ts]
    sink.add_float(metric.REWARD_MEAN, sum(scored) / len(scored) if scored else float("nan"))
    sink.add_float(metric.REWARD_MISSING, float(len(rewards) - len(scored)))
    sink.add_float(metric.GROUPS_DROPPED, float(groups.dropped))
    sink.add_float(metric.GROUPS_PARTIAL, float(len(groups.partial)))
    sink.add_float(metric.AGENT_EPISODES_RUN, float(len(ran)))
    sink.add_float(
        metric.AGENT_SEQUENCES, float(sum(len({t.sequence_index for t in ts}) for ts in ran))
    )
    sink.add_float(metric.AGENT_TURNS_MEAN, len(every_turn) / len(ran) if ran else 0.0)
    sink.add_float(metric.AGENT_SAMPLED_TOKENS, float(sum(sampled)))
    sink.add_float(metric.AGENT_CONTEXT_TOKENS, float(sum(len(t.context_ids) for t in every_turn)))
    lag = max((policy_version - t.policy_version for t in every_turn), default=0)
    sink.add_float(metric.AGENT_VERSION_LAG_MAX, float(lag))
    if sampled:
        sink.add_float(metric.RESPONSE_LENGTH_MEAN, sum(sampled) / len(sampled))
        sink.add_float(metric.RESPONSE_LENGTH_MAX, float(max(sampled)))
    if every_turn:
        cut = sum(t.finish_reason == "length" for t in every_turn)
        sink.add_float(metric.RESPONSE_TRUNCATION_RATE, cut / len(every_turn))


def advertised_url(server: PolicyServer, settings: Settings) -> str:
    """The policy server's URL as the API reaches it: `serve_advertise_host`, else the bound
    host, or this machine's name when it binds every interface."""
    host = settings.serve_advertise_host
    if host is None:
        wildcard = settings.serve_host in ("0.0.0.0", "::", "")
        host = socket.gethostname() if wildcard else settings.serve_host
    return f"http://{host}:{server.port}"
