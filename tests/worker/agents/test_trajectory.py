"""Token fidelity: an episode's turns keep the engine's sampled ids wherever the harness's
re-rendered history would tokenize differently, and become one sequence per unbroken history."""

from __future__ import annotations

import copy

import pytest

from keel_worker.agents.chat_format import ChatRenderer, ChatRequestError, parse_completion
from keel_worker.agents.trajectory import Trajectory, training_sequences
from keel_worker.engines.tokenizer import build_byte_tokenizer

USER = {"role": "user", "content": "Say hello."}
MORE = {"role": "user", "content": "Again."}
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def _reply(content: str | None, tool_calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _turn(trajectory, messages, sampled_ids, *, tools=None, finish_reason="stop", version=0):
    """Plan and record one call whose reply is the sampled text, as the server returns it."""
    planned = trajectory.plan(messages, tools)
    logprobs = [-0.5 - i for i in range(len(sampled_ids))]
    parsed = parse_completion(trajectory.renderer.decode(sampled_ids), tools)
    reply = _reply(parsed.content, parsed.tool_calls)
    turn = trajectory.record(planned, sampled_ids, logprobs, version, finish_reason, reply)
    return planned, turn, reply


def test_merged_tokens_at_a_turn_boundary_keep_the_sampled_ids(smollm2):
    """SmolLM2 samples "hel" + "lo"; the harness sends back "hello", one token when re-encoded."""
    hel_lo = smollm2.encode("hel") + smollm2.encode("lo")
    assert smollm2.encode("hello") == [28120] and hel_lo == [2797, 5365]
    trajectory = Trajectory(smollm2)
    first, _, reply = _turn(trajectory, [USER], [*hel_lo, 2])  # 2: <|im_end|>
    assert reply == _reply("hello")

    messages = [USER, reply, MORE]
    second = trajectory.plan(messages)

    assert second.sequence_index == 0
    assert second.prompt_ids[: len(first.prompt_ids) + 3] == [*first.prompt_ids, *hel_lo, 2]
    naive = smollm2.render(messages, add_generation_prompt=True)
    assert naive != second.prompt_ids and 28120 in naive and 28120 not in second.prompt_ids
    # What the harness adds after the reply is the template's own text for it.
    assert smollm2.encode("\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n") == (
        second.context_ids
    )
    assert len(naive) == len(second.prompt_ids) - 1  # only the merge differs


def test_template_newline_after_a_sampled_eos_is_added_once(byte):
    eos = byte.encode("<|im_end|>")
    sampled = [*byte.encode("Hello!"), *eos]
    trajectory = Trajectory(byte)
    first, _, reply = _turn(trajectory, [USER], sampled)

    second = trajectory.plan([USER, reply, MORE])

    assert second.context_ids == byte.encode(
        "\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert second.prompt_ids == first.prompt_ids + sampled + second.context_ids
    # Equal to a clean re-render here (no merges in the byte tokenizer): nothing doubled or lost.
    assert second.prompt_ids == byte.render([USER, reply, MORE], add_generation_prompt=True)


def test_a_length_truncated_turn_gets_the_whole_closing(byte):
    sampled = byte.encode("Hello, I was cut")
    trajectory = Trajectory(byte)
    first, _, reply = _turn(trajectory, [USER], sampled, finish_reason="length")

    second = trajectory.plan([USER, reply, MORE])

    assert second.context_ids == byte.encode(
        "<|im_end|>\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert second.prompt_ids == first.prompt_ids + sampled + second.context_ids


@pytest.mark.parametrize("sent_back", ["answer", "  answer\n", "<think>\n</think>answer"])
def test_stripped_reasoning_continues_the_sequence_with_our_ids(smollm2, sent_back):
    sampled = [*smollm2.encode("<think>\nx is 2\n</think>\n\nanswer"), 2]
    trajectory = Trajectory(smollm2)
    first, _, reply = _turn(trajectory, [USER], sampled)
    assert reply["content"].startswith("<think>")

    second = trajectory.plan([USER, _reply(sent_back), MORE])

    assert second.sequence_index == 0
    assert second.prompt_ids == first.prompt_ids + sampled + second.context_ids
    assert second.context_ids == smollm2.encode(
        "\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n"
    )


def _three_turns(renderer: ChatRenderer):
    trajectory = Trajectory(renderer)
    messages = [USER]
    planned_turns = []
    for version, text in enumerate(["One.", "Two.", "Three."]):
        sampled = [*renderer.encode(text), *renderer.encode("<|im_end|>")]
        planned, _, reply = _turn(trajectory, messages, sampled, version=version)
        planned_turns.append(planned)
        messages = [*messages, reply, {"role": "user", "content": f"after {text}"}]
    return trajectory, planned_turns


def test_append_only_history_is_one_sequence_equal_to_its_turns_concatenated(byte):
    trajectory, planned = _three_turns(byte)
    turns = trajectory.turns

    assert [t.sequence_index for t in turns] == [0, 0, 0]
    (sequence,) = training_sequences(turns)
    concatenated = [i for t in turns for i in t.context_ids + t.sampled_ids]
    assert sequence.prompt_ids + sequence.response_ids == concatenated
    assert sequence.prompt_ids == planned[0].prompt_ids == turns[0].context_ids
    assert planned[2].prompt_ids + turns[2].sampled_ids == concatenated
    # Positions trained: exactly the sampled ones; μ there, 0.0 on context; each turn's version.
    trained = [i for i, m in zip(sequence.response_ids, sequence.trained_mask, strict=True) if m]
    assert trained == [i for t in turns for i in t.sampled_ids]
    one = len(turns[0].sampled_ids)
    two = len(turns[1].context_ids)
    assert sequence.logprobs[:one] == turns[0].logprobs
    assert sequence.logprobs[one : one + two] == [0.0] * two
    assert sequence.logprobs[one + two : one + two + 2] == [-0.5, -1.5]
    assert sequence.policy_versions[:one] == [0] * one
    assert sequence.policy_versions[one : one + two + len(turns[1].sampled_ids)] == [1] * (
        two + len(turns[1].sampled_ids)
    )
    assert sequence.policy_versions[-1] == 2
    assert len(sequence.response_ids) == len(sequence.trained_mask) == len(sequence.logprobs)


@pytest.mark.parametrize("change", ["edit", "drop", "tools", "reply", "tool_choice"])
def test_a_history_that_is_not_an_extension_starts_a_new_sequence(byte, change):
    trajectory = Trajectory(byte)
    first_user = {"role": "user", "content": "First."}
    _, _, reply1 = _turn(trajectory, [first_user], byte.encode("A<|im_end|>"), tools=[ADD])
    history = [first_user, reply1, USER]
    _, _, reply2 = _turn(trajectory, history, byte.encode("B<|im_end|>"), tools=[ADD])
    tools, tool_choice = [ADD], "auto"
    if change == "edit":
        history = [{"role": "user", "content": "First!"}, reply1, USER]
    elif change == "drop":
        history = [reply1, USER]
    elif change == "tools":
        tools = [ADD, {"type": "function", "function": {"name": "mul"}}]
    elif change == "reply":
        reply2 = _reply("C")
    elif change == "tool_choice":
        tool_choice = "none"
    messages = [*history, reply2, MORE]

    planned = trajectory.plan(messages, tools, tool_choice=tool_choice)

    assert planned.sequence_index == 1
    full = byte.render(messages, tools, add_generation_prompt=True, tool_choice=tool_choice)
    assert planned.context_ids == planned.prompt_ids == full
    turn = trajectory.record(planned, [7], [-1.0], 0, "stop", _reply("x"))
    assert len(training_sequences([*trajectory.turns[:2], turn])) == 2


def test_a_branch_back_to_an_older_sequence_extends_that_one(byte):
    trajectory = Trajectory(byte)
    _, _, reply_a = _turn(trajectory, [USER], byte.encode("A<|im_end|>"))
    other = {"role": "user", "content": "Unrelated."}
    _, _, reply_b = _turn(trajectory, [other], byte.encode("B<|im_end|>"))
    assert [t.sequence_index for t in trajectory.turns] == [0, 1]

    assert trajectory.plan([USER, reply_a, MORE]).sequence_index == 0
    assert trajectory.plan([other, reply_b, MORE]).sequence_index == 1


def test_tool_calls_continue_the_sequence_whatever_the_harness_spacing(smollm2):
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    sampled = [*smollm2.encode(text), 2]
    trajectory = Trajectory(smollm2)
    first, _, reply = _turn(trajectory, [USER], sampled, tools=[ADD])
    assert reply["content"] is None and reply["tool_calls"][0]["function"]["name"] == "add"
    echoed = _reply(
        "",
        [
            {
                "id": "x1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"b":3,"a":2}'},
            }
        ],
    )
    result = {"role": "tool", "tool_call_id": "x1", "content": "5"}

    second = trajectory.plan([USER, echoed, result], [ADD])

    assert second.sequence_index == 0
    assert second.prompt_ids == first.prompt_ids + sampled + second.context_ids
    assert second.context_ids == smollm2.encode(
        "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_text_level_difference_where_tokens_merge_across_the_boundary(smollm2_tokenizer):
    """A template that concatenates contents (as base models are prompted): the harness's next
    message merges with the reply's last token, so only the text is a prefix."""
    renderer = _renderer_with(
        smollm2_tokenizer, "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    assert renderer.turn_closing_ids == []
    trajectory = Trajectory(renderer)
    start = {"role": "user", "content": "Say:"}
    sampled = renderer.encode(" hel")
    first, _, reply = _turn(trajectory, [start], sampled)

    second = trajectory.plan([start, reply, {"role": "user", "content": "lo world"}])

    assert second.sequence_index == 0
    assert second.context_ids == renderer.encode("lo world")
    assert second.prompt_ids == first.prompt_ids + sampled + renderer.encode("lo world")


def test_a_template_that_rewrites_earlier_turns_starts_a_new_sequence(byte):
    # Only the last message is printed as is; earlier ones upper-cased (as templates that drop
    # earlier reasoning rewrite them): neither rendering is a prefix of the other.
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{{ m['content'] if loop.last else m['content'] | upper }}{{ '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    renderer = _renderer_with(build_byte_tokenizer(), template)
    trajectory = Trajectory(renderer)
    _, _, reply = _turn(trajectory, [USER], renderer.encode("hi<|im_end|>"))

    assert trajectory.plan([USER, reply, MORE]).sequence_index == 1


def test_calls_planned_from_the_same_state_record_as_separate_sequences(byte):
    trajectory = Trajectory(byte)
    _, _, reply = _turn(trajectory, [USER], byte.encode("A<|im_end|>"))
    messages = [USER, reply, MORE]
    left, right = trajectory.plan(messages), trajectory.plan(messages)
    assert left.sequence_index == right.sequence_index == 0

    trajectory.record(left, [40], [-1.0], 0, "stop", _reply("L"))
    late = trajectory.record(right, [41], [-2.0], 0, "stop", _reply("R"))

    assert late.sequence_index == 1 and late.context_ids == right.prompt_ids
    sequences = training_sequences(trajectory.turns)
    assert [s.prompt_ids + s.response_ids for s in sequences] == [
        [*left.prompt_ids, 40],
        [*right.prompt_ids, 41],
    ]


def test_record_refuses_a_logprob_count_that_differs_from_the_sampled_ids(byte):
    trajectory = Trajectory(byte)
    planned = trajectory.plan([USER])
    with pytest.raises(ValueError, match="2 logprobs for 1 sampled ids"):
        trajectory.record(planned, [5], [-1.0, -2.0], 0, "stop", _reply("x"))
    assert trajectory.turns == []


def test_an_invalid_request_plans_nothing(byte):
    trajectory = Trajectory(byte)
    with pytest.raises(ChatRequestError):
        trajectory.plan([{"role": "robot", "content": "hi"}])
    assert trajectory.plan([USER]).sequence_index == 0


def _renderer_with(tokenizer, template: str) -> ChatRenderer:
    """A renderer over a copy of `tokenizer` whose chat template is `template`."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template
    return ChatRenderer(tokenizer)


def test_raw_prompt_calls_continue_only_on_an_exact_token_prefix(byte):
    """`/completions`: a prompt that starts with a sequence's tokens continues it (its context is
    the rest); one that re-tokenized the history differently starts a new sequence."""
    trajectory = Trajectory(byte)
    prompt = byte.encode("Q: 1+1?\nA:")
    first = trajectory.plan_tokens(prompt)
    assert (first.sequence_index, first.context_ids, first.continues) == (0, prompt, False)
    trajectory.record(first, byte.encode(" 2"), [-0.1, -0.2], 0, "length", _reply(" 2"))

    more = byte.encode("\nQ: 2+2?\nA:")
    second = trajectory.plan_tokens([*prompt, *byte.encode(" 2"), *more])
    assert (second.sequence_index, second.context_ids, second.continues) == (0, more, True)
    trajectory.record(second, byte.encode(" 4"), [-0.3, -0.4], 0, "length", _reply(" 4"))
    (sequence,) = training_sequences(trajectory.turns)
    assert sequence.prompt_ids == prompt
    assert sequence.trained_mask == [True] * 2 + [False] * len(more) + [True] * 2

    edited = trajectory.plan_tokens([*prompt, *byte.encode(" two"), *more])
    assert (edited.sequence_index, edited.continues) == (1, False)
    assert edited.context_ids == edited.prompt_ids
