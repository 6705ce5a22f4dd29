"""The token-exact record of one agent episode: its turns, and the training sequences they form.

Owns `Trajectory` (plans each chat call of an episode against the turns recorded so far, and
records what the engine sampled), `Turn`, `PlannedTurn`, and `training_sequences` (turns → the
sequences the trainer consumes).

A sequence is the concatenation over its turns of `context_ids + sampled_ids`; only sampled ids
are trained. A call continues a sequence when its messages are that sequence's last request, then
the assistant message keel returned for it (compared after normalizing: content without
whitespace at its ends or `<think>…</think>` blocks, tool calls by name and parsed arguments),
then more messages. Its context is then the rest of the template's turn closing after the
sampled ids (only `\\n` after a sampled `<|im_end|>`, the whole closing after a turn cut at the
length limit) and the tokens the template writes for the messages after the assistant's:
keel's sampled ids stay in the sequence and the harness's text of the reply is never tokenized
into it, so merged tokens at a turn boundary or stripped reasoning cannot drift. Any other call
(the first, an edited or dropped message, changed tools or tool_choice) starts a new sequence
whose context is the whole rendered prompt. The sequences of an episode share its reward.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keel_worker.agents.chat_format import (
    ChatRenderer,
    Message,
    Tool,
    ToolChoice,
    call_arguments,
    message_text,
)

if TYPE_CHECKING:
    from keel_worker.engines.base import FinishReason

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Turn:
    """One sampling call of an episode.

    Attributes:
        sequence_index: which of the episode's sequences the turn extends (0, 1, ...).
        context_ids: tokens appended to the sequence before sampling (the whole rendered prompt
            on a sequence's first turn); never trained.
        sampled_ids: the engine's sampled ids, bit for bit; the trained positions.
        logprobs: μ of each sampled id, recorded by the engine at sampling time.
        policy_version: the policy version that sampled the turn.
        finish_reason: the engine's "stop" (ended with EOS) or "length".
    """

    sequence_index: int
    context_ids: list[int]
    sampled_ids: list[int]
    logprobs: list[float]
    policy_version: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class PlannedTurn:
    """A call planned against the trajectory: `prompt_ids` (the sequence so far, then
    `context_ids`) is what the engine is fed."""

    sequence_index: int
    context_ids: list[int]
    prompt_ids: list[int]
    # The sequence's length when planned: a turn recorded in between makes this plan stale.
    base_length: int = field(repr=False)
    request: _Request = field(repr=False)
    # What the call adds to the conversation: the messages after the echoed reply when it
    # continues a sequence, all of them when it starts one.
    added_messages: list[Message] = field(default_factory=list, repr=False)

    @property
    def continues(self) -> bool:
        """Whether the call extends a sequence the episode already has."""
        return self.base_length > 0


@dataclass(frozen=True)
class TrainingSequence:
    """One sequence of an episode, as the trainer takes it. `trained_mask`, `logprobs` (0.0 at
    context positions) and `policy_versions` (the version of the turn each position belongs to;
    read only where trained) run along `response_ids`; `finish_reason` is its last turn's."""

    sequence_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    trained_mask: list[bool]
    logprobs: list[float]
    policy_versions: list[int]
    finish_reason: FinishReason


@dataclass(frozen=True)
class _Request:
    """A request as the matching compares it: normalized messages and the tools setting."""

    messages: list[Any]
    tools_key: str
    raw_messages: list[Message] = field(compare=False)
    tools: list[Tool] | None = field(compare=False)
    tool_choice: ToolChoice = field(compare=False)


@dataclass
class _Head:
    """The last turn of a sequence: what a continuing call must repeat."""

    request: _Request
    reply: Any
    sampled_ids: list[int]


class Trajectory:
    """The turns of one episode, planned and recorded on the worker's main thread."""

    def __init__(self, renderer: ChatRenderer) -> None:
        self.renderer = renderer
        self.turns: list[Turn] = []
        self._sequences: dict[int, list[int]] = {}
        # Insertion order is recency: the most recently extended sequence is tried first.
        self._heads: dict[int, _Head] = {}

    def plan(
        self,
        messages: list[Message],
        tools: list[Tool] | None = None,
        *,
        tool_choice: ToolChoice = "auto",
    ) -> PlannedTurn:
        """Plan a call; raises `ChatRequestError` on a request that cannot be rendered."""
        full_ids = self.renderer.render(
            messages, tools, add_generation_prompt=True, tool_choice=tool_choice
        )
        request = _request(messages, tools, tool_choice)
        for index in reversed(self._heads):
            head = self._heads[index]
            context_ids = self._continuation(head, request, full_ids)
            if context_ids is not None:
                sequence = self._sequences[index]
                added = messages[len(head.request.messages) + 1 :]
                return PlannedTurn(
                    index, context_ids, sequence + context_ids, len(sequence), request, added
                )
        return PlannedTurn(len(self._sequences), full_ids, full_ids, 0, request, list(messages))

    def plan_tokens(self, prompt_ids: list[int]) -> PlannedTurn:
        """Plan a raw-prompt call (`/completions`): it continues the sequence whose tokens it
        starts with (newest first), else starts a new one. Tokens are compared as given: a
        harness that re-tokenizes a history text gets a new sequence, never drifted tokens."""
        request = _request([], None, "tokens")
        for index in reversed(self._heads):
            sequence = self._sequences[index]
            if self._heads[index].request.tools_key == request.tools_key and (
                len(prompt_ids) > len(sequence) and prompt_ids[: len(sequence)] == sequence
            ):
                context_ids = list(prompt_ids[len(sequence) :])
                return PlannedTurn(index, context_ids, list(prompt_ids), len(sequence), request)
        ids = list(prompt_ids)
        return PlannedTurn(len(self._sequences), ids, ids, 0, request)

    def record(
        self,
        planned: PlannedTurn,
        sampled_ids: list[int],
        logprobs: list[float],
        policy_version: int,
        finish_reason: FinishReason,
        reply_message: Message,
    ) -> Turn:
        """Record what the engine sampled for `planned`; `reply_message` is the assistant message
        keel returned (an OpenAI dict), which a continuing call must send back."""
        if len(logprobs) != len(sampled_ids):
            raise ValueError(f"{len(logprobs)} logprobs for {len(sampled_ids)} sampled ids")
        index, context_ids = planned.sequence_index, planned.context_ids
        if len(self._sequences.get(index, [])) != planned.base_length:
            # Planned against a state that another call of the episode has since extended (two
            # calls in one batch): what the engine was fed becomes a sequence of its own.
            index, context_ids = len(self._sequences), planned.prompt_ids
        turn = Turn(
            index,
            list(context_ids),
            list(sampled_ids),
            list(logprobs),
            policy_version,
            finish_reason,
        )
        self.turns.append(turn)
        self._sequences[index] = [*planned.prompt_ids, *sampled_ids]
        self._heads.pop(index, None)
        self._heads[index] = _Head(planned.request, _normalized(reply_message), turn.sampled_ids)
        return turn

    def _continuation(
        self, head: _Head, request: _Request, full_ids: list[int]
    ) -> list[int] | None:
        """Context ids that continue `head`'s sequence with `request`, or None if it does not."""
        previous = head.request
        count = len(previous.messages)
        if (
            request.tools_key != previous.tools_key
            or len(request.messages) <= count
            or request.messages[:count] != previous.messages
            or request.messages[count] != head.reply
        ):
            return None
        suffix_ids = self._suffix_ids(request, count + 1, full_ids)
        if suffix_ids is None:
            return None
        return _closing_rest(head.sampled_ids, self.renderer.turn_closing_ids) + suffix_ids

    def _suffix_ids(self, request: _Request, upto: int, full_ids: list[int]) -> list[int] | None:
        """The tokens the template writes for the messages after the first `upto`, ending with
        the generation prompt: a token-level difference of two renderings, else a text-level one,
        else None (a template that rewrites earlier turns once later ones follow)."""
        render, tools, tool_choice = self.renderer, request.tools, request.tool_choice
        head_messages = request.raw_messages[:upto]
        head_ids = render.render(
            head_messages, tools, add_generation_prompt=False, tool_choice=tool_choice
        )
        if full_ids[: len(head_ids)] == head_ids:
            return full_ids[len(head_ids) :]
        head_text = render.render_text(
            head_messages, tools, add_generation_prompt=False, tool_choice=tool_choice
        )
        full_text = render.render_text(
            request.raw_messages, tools, add_generation_prompt=True, tool_choice=tool_choice
        )
        if full_text.startswith(head_text):
            return render.encode(full_text[len(head_text) :])
        return None


def training_sequences(turns: list[Turn]) -> list[TrainingSequence]:
    """One `TrainingSequence` per sequence index, in index order: the prompt is the first turn's
    context; the response is everything after it, trained where sampled."""
    by_index: dict[int, list[Turn]] = {}
    for turn in turns:
        by_index.setdefault(turn.sequence_index, []).append(turn)
    return [_training_sequence(by_index[index]) for index in sorted(by_index)]


def _training_sequence(turns: list[Turn]) -> TrainingSequence:
    response_ids: list[int] = []
    trained_mask: list[bool] = []
    logprobs: list[float] = []
    policy_versions: list[int] = []
    for position, turn in enumerate(turns):
        context_ids = turn.context_ids if position > 0 else []
        response_ids += context_ids + turn.sampled_ids
        trained_mask += [False] * len(context_ids) + [True] * len(turn.sampled_ids)
        logprobs += [0.0] * len(context_ids) + turn.logprobs
        policy_versions += [turn.policy_version] * (len(context_ids) + len(turn.sampled_ids))
    return TrainingSequence(
        turns[0].sequence_index,
        list(turns[0].context_ids),
        response_ids,
        trained_mask,
        logprobs,
        policy_versions,
        turns[-1].finish_reason,
    )


def _closing_rest(sampled_ids: list[int], closing_ids: list[int]) -> list[int]:
    """The part of the template's turn closing the sampled ids do not already end with."""
    for overlap in range(min(len(sampled_ids), len(closing_ids)), 0, -1):
        if sampled_ids[-overlap:] == closing_ids[:overlap]:
            return closing_ids[overlap:]
    return list(closing_ids)


def _request(
    messages: list[Message], tools: list[Tool] | None, tool_choice: ToolChoice
) -> _Request:
    tools_key = json.dumps([tools or [], tool_choice], sort_keys=True)
    return _Request([_normalized(m) for m in messages], tools_key, messages, tools, tool_choice)


def _normalized(message: Message) -> tuple[Any, ...]:
    """A message as the continuation check compares it (the module docstring's normalizing)."""
    role, text = message["role"], message_text(message)
    if role != "assistant":
        return (role, text, message.get("tool_call_id"))
    calls = tuple(
        (call["function"]["name"], json.dumps(call_arguments(call), sort_keys=True))
        for call in message.get("tool_calls") or []
    )
    return (role, _THINK.sub("", text).strip(), calls)
