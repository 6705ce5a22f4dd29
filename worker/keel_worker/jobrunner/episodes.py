"""Answering the model calls of a step's agent episodes (docs/concepts/agents.md §2, §3).

`EpisodeCalls.serve(calls)` runs on the job loop's thread, which owns the engine and tokenizer:
each call is checked and planned against its episode's trajectory (`agents.trajectory`: the
tokens the engine is fed continue the episode's own sampled ids), every call that passed is
sampled in one batch per set of sampling parameters (`agents.batcher`), and each turn is written
to the database before its answer leaves, so a turn the harness saw is a turn the trainer
trains on. A call that fails a check is answered with its 4xx and records nothing.

The job's sampling parameters are the policy's: the μ log-probabilities the trainer corrects with
are those of `config.rollout.temperature` (and top-p, top-k), so a call asking for others is
refused rather than sampled from a distribution the trainer does not model. `max_tokens` may ask
for fewer new tokens than `config.rollout.max_new_tokens`; more are capped at it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from keel.types.training import TrainingConfig
from keel_server.db import SessionFactory, session_scope
from keel_server.db import episodes as episodes_db
from keel_worker.agents.batcher import GenerationRequest, GenerationResult, generate_batched
from keel_worker.agents.chat_format import ChatRenderer, ChatRequestError, parse_completion
from keel_worker.agents.replies import chat_completion, text_completion
from keel_worker.agents.server import Call
from keel_worker.agents.trajectory import PlannedTurn, Trajectory
from keel_worker.jobrunner.rewards import db_text

log = logging.getLogger(__name__)


class CallRefused(Exception):
    """A call answered with a 4xx before anything is sampled or recorded."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass
class OpenEpisode:
    """An episode of the current step, as the worker serving it knows it."""

    rollout_id: str
    trajectory: Trajectory
    turns_before: int = 0  # turns stored by an earlier run of this step (a resume)
    sequences_before: int = 0

    @property
    def next_turn(self) -> int:
        return self.turns_before + len(self.trajectory.turns)


@dataclass
class _Planned:
    call: Call
    episode: OpenEpisode
    turn: PlannedTurn
    request: GenerationRequest
    tools: list[dict[str, Any]] | None
    new_messages: list[dict[str, Any]]
    want_logprobs: bool


class EpisodeCalls:
    """The calls of one job's open episodes, answered with its engine at its policy version."""

    def __init__(
        self,
        *,
        engine,
        tokenizer,
        config: TrainingConfig,
        factory: SessionFactory,
        job_id: str,
        max_context: int,
    ) -> None:
        self.engine, self.tokenizer, self.config = engine, tokenizer, config
        self.factory, self.job_id, self.max_context = factory, job_id, max_context
        self.renderer = ChatRenderer(tokenizer)
        self.episodes: dict[str, OpenEpisode] = {}
        # MoE engines' routes of each sequence (episode id, sequence index), kept here for R3.
        self.routes: dict[tuple[str, int], torch.Tensor] = {}
        self.policy_version = 0

    def open(self, stored_turns: dict[str, list]) -> None:
        """The step's episodes (rollout id → turns an earlier run of the step stored)."""
        self.routes = {}
        self.episodes = {
            rollout_id: OpenEpisode(
                rollout_id,
                Trajectory(self.renderer),
                turns_before=len(turns),
                sequences_before=1 + max((t.sequence_index for t in turns), default=-1),
            )
            for rollout_id, turns in stored_turns.items()
        }

    def serve(self, calls: list[Call]) -> None:
        planned = []
        for call in calls:
            try:
                planned.append(self._plan(call))
            except CallRefused as refused:
                call.answer(refused.status, {"code": refused.code, "detail": refused.detail})
            except ChatRequestError as bad:
                call.answer(400, {"code": bad.code, "detail": bad.detail})
        if not planned:
            return
        try:
            results = generate_batched(self.engine, [p.request for p in planned])
        except Exception:  # the engine failed: every waiting harness hears it, then the job does
            for p in planned:
                p.call.answer(500, {"code": "internal_error", "detail": "sampling failed"})
            raise
        for p, result in zip(planned, results, strict=True):
            try:
                p.call.answer(200, self._record(p, result))
            except Exception:  # the DB write failed: the turn is not kept, the harness retries
                log.exception("job %s: recording a turn of %s failed", self.job_id, p.episode)
                p.call.answer(
                    500, {"code": "internal_error", "detail": "recording the turn failed"}
                )

    # ------------------------------------------------------------------ one call
    def _plan(self, call: Call) -> _Planned:
        episode = self.episodes.get(call.episode_id)
        if episode is None:
            raise CallRefused(409, "episode_ended", f"episode {call.episode_id} is not open")
        body = call.body
        self._check_sampling(body)
        cap = self.config.rollout.max_new_tokens
        max_new_tokens = min(
            body.get("max_completion_tokens") or body.get("max_tokens") or cap, cap
        )
        if call.kind == "chat/completions":
            tool_choice = body.get("tool_choice", "auto")
            turn = episode.trajectory.plan(
                body["messages"], body.get("tools"), tool_choice=tool_choice
            )
            tools = None if tool_choice == "none" else body.get("tools")
            new_messages = turn.added_messages
        else:
            prompt = body["prompt"]
            ids = self._token_ids(prompt) if isinstance(prompt, list) else self._tokenize(prompt)
            turn = episode.trajectory.plan_tokens(ids)
            tools, new_messages = None, [{"role": "prompt", "content": prompt}]
        over = len(turn.prompt_ids) + max_new_tokens - self.max_context
        if over > 0:
            raise CallRefused(
                400,
                "context_length_exceeded",
                f"the episode's context is {len(turn.prompt_ids)} tokens and the call asks for "
                f"{max_new_tokens} new ones: {over} over the model's {self.max_context}",
            )
        rollout = self.config.rollout
        request = GenerationRequest(
            prompt_ids=turn.prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            top_k=rollout.top_k,
        )
        want = bool(body.get("logprobs"))
        return _Planned(call, episode, turn, request, tools, new_messages, want)

    def _check_sampling(self, body: dict[str, Any]) -> None:
        rollout = self.config.rollout
        for name, value in (("temperature", rollout.temperature), ("top_p", rollout.top_p)):
            if name in body and abs(body[name] - value) > 1e-9:
                raise CallRefused(
                    400,
                    "invalid_request",
                    f"`{name}` is {body[name]} but this job samples at {name} {value}: the "
                    "trainer corrects for the policy's own distribution (leave it unset)",
                )

    def _token_ids(self, ids: list[int]) -> list[int]:
        vocab = len(self.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise CallRefused(
                400, "invalid_request", f"`prompt` holds ids outside the vocabulary: {bad[:5]}"
            )
        return list(ids)

    def _tokenize(self, text: str) -> list[int]:
        ids = self.renderer.encode(text)
        if not ids:
            raise CallRefused(400, "invalid_request", "`prompt` tokenizes to nothing")
        return ids

    def _record(self, p: _Planned, result: GenerationResult) -> dict[str, Any]:
        """Store the turn, then the answer the harness gets."""
        episode, version = p.episode, self.policy_version
        text = self.renderer.decode(result.sampled_ids)
        if p.call.kind == "chat/completions":
            parsed = parse_completion(text, p.tools)
            reply: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.tool_calls:
                reply["tool_calls"] = parsed.tool_calls
            finish = "tool_calls" if parsed.tool_calls else result.finish_reason
        else:
            reply, finish = {"role": "assistant", "content": text}, result.finish_reason
        # The trajectory decides the turn's sequence (a call planned before another call of the
        # episode was recorded starts one of its own), so it records first; a failed write then
        # leaves a turn only in memory, and the harness's retry starts a new sequence.
        index = episode.next_turn
        turn = episode.trajectory.record(
            p.turn, result.sampled_ids, result.logprobs, version, result.finish_reason, reply
        )
        sequence_index = episode.sequences_before + turn.sequence_index
        with session_scope(self.factory) as session:
            episodes_db.add_turn(
                session,
                episode.rollout_id,
                index=index,
                sequence_index=sequence_index,
                context_ids=turn.context_ids,
                sampled_ids=turn.sampled_ids,
                logprobs=turn.logprobs,
                policy_version=version,
                finish_reason=turn.finish_reason,
                messages=_db_json(p.new_messages),
                reply=_db_json(reply),
                completion=db_text(text),
            )
        if result.routes is not None:
            # The last turn's routes cover its whole sequence (everything the engine was fed).
            self.routes[(episode.rollout_id, sequence_index)] = result.routes
        keel = {
            "episode_id": episode.rollout_id,
            "turn": index,
            "sequence_index": sequence_index,
            "token_ids": result.sampled_ids,
            "logprobs": result.logprobs,
            "policy_version": version,
        }
        strings = self._token_strings(result.sampled_ids) if p.want_logprobs else None
        common = {
            "call_id": f"{episode.rollout_id}-{index}",
            "model": self.job_id,
            "finish_reason": finish,
            "prompt_tokens": len(p.turn.prompt_ids),
            "token_strings": strings,
            "keel": keel,
        }
        if p.call.kind == "chat/completions":
            return chat_completion(message=reply, **common)
        return text_completion(text=text, **common)

    def _token_strings(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]


def _db_json(value: Any) -> Any:
    """JSON as the database stores it (PostgreSQL text cannot hold NUL)."""
    if isinstance(value, str):
        return db_text(value)
    if isinstance(value, list):
        return [_db_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _db_json(v) for k, v in value.items()}
    return value
