"""Chat rendering, tool formats and completion parsing on real tokenizers and templates."""

from __future__ import annotations

import json

import pytest

from keel_worker.agents.chat_format import ChatRenderer, ChatRequestError, parse_completion
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.tokenizer import build_byte_tokenizer

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
    },
}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
TOOLS = [ADD, LOOKUP]


def _call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+3, and the capital of France?"},
    {
        "role": "assistant",
        "content": "Two calls.",
        "tool_calls": [
            _call("c1", "add", '{"a": 2, "b": 3}'),
            _call("c2", "lookup", '{"q": "capital of France", "lang": "é"}'),
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
    {"role": "tool", "tool_call_id": "c2", "content": "Paris"},
]


def test_closing_ids_are_what_chatml_writes_after_an_assistant_message(byte, smollm2):
    assert byte.turn_closing_ids == byte.encode("<|im_end|>\n")
    assert smollm2.turn_closing_ids == [2, 198]  # <|im_end|>, "\n"
    assert not byte.native_tools and not smollm2.native_tools


def test_a_single_user_turn_renders_as_the_single_turn_path_encodes_it(byte, smollm2_tokenizer):
    for tokenizer in (build_byte_tokenizer(), smollm2_tokenizer):
        renderer = ChatRenderer(tokenizer)
        ids = renderer.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
        assert ids == encode_prompt(tokenizer, "hi")


def test_smollm2_keeps_its_default_system_prompt_without_tools(smollm2):
    text = smollm2.render_text([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_text_parts_are_joined_as_paragraphs(byte):
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    as_parts = byte.render([{"role": "user", "content": parts}], add_generation_prompt=False)
    as_text = byte.render([{"role": "user", "content": "one\ntwo"}], add_generation_prompt=False)
    assert as_parts == as_text


def test_hermes_fallback_writes_tools_calls_and_results_in_plain_turns(byte):
    text = byte.render_text(TOOL_CONVERSATION, TOOLS, add_generation_prompt=True)
    listing = json.dumps(ADD) + "\n" + json.dumps(LOOKUP)
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert f"<tools>\n{listing}\n</tools>" in system
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}' in system
    assert "You must" not in system
    assert rest == (
        "<|im_start|>user\n2+3, and the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nTwo calls.\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
        '<tool_call>\n{"name": "lookup", "arguments": {"q": "capital of France", "lang": "é"}}\n'
        "</tool_call><|im_end|>\n"
        # Both results answer one assistant turn: one user turn, no `tool` role.
        "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n"
        "<tool_response>\nParis\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_hermes_tools_block_is_a_system_turn_of_its_own_without_a_system_message(smollm2):
    messages = [{"role": "user", "content": "hi"}]
    text = smollm2.render_text(messages, [ADD], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert "named SmolLM" not in text  # the template's default stands in only for no system turn


def test_tool_choice_none_hides_the_tools_and_required_or_named_add_one_line(byte, native):
    messages = [{"role": "user", "content": "hi"}]
    for renderer in (byte, native):
        plain = renderer.render(messages, add_generation_prompt=True)
        assert renderer.render(messages, TOOLS, add_generation_prompt=True, tool_choice="none") == (
            plain
        )
        assert renderer.render(messages, TOOLS, add_generation_prompt=True) != plain

    def system(tool_choice) -> str:
        text = byte.render_text(
            messages, TOOLS, add_generation_prompt=True, tool_choice=tool_choice
        )
        return text.split("<|im_end|>")[0]

    assert system("auto").endswith("</tool_call>")
    assert system("required").endswith("</tool_call>\n\nYou must call at least one function.")
    named = {"type": "function", "function": {"name": "lookup"}}
    assert system(named).endswith("</tool_call>\n\nYou must call the function lookup.")


def test_native_template_gets_tools_and_arguments_as_objects(native):
    text = native.render_text(TOOL_CONVERSATION, TOOLS, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n")
    # `tojson` of a string argument would print it quoted ("{\"a\": 2, ...}").
    assert '{"name": "add", "arguments": {"a": 2, "b": 3}}' in text
    assert "<tool_response>\n5\n</tool_response>\n<tool_response>\nParis\n" in text


@pytest.mark.parametrize("renderer_name", ["byte", "native", "smollm2"])
def test_rendered_tool_calls_parse_back_to_the_same_calls(renderer_name, request):
    renderer: ChatRenderer = request.getfixturevalue(renderer_name)
    before, upto = TOOL_CONVERSATION[:2], TOOL_CONVERSATION[:3]
    prefix = renderer.render_text(before, TOOLS, add_generation_prompt=True)
    text = renderer.render_text(upto, TOOLS, add_generation_prompt=False)
    assert text.startswith(prefix) and text.endswith("<|im_end|>\n")
    written = text[len(prefix) : -len("<|im_end|>\n")]  # what the model would have sampled

    reply = parse_completion(written, TOOLS)

    assert reply.content == "Two calls."
    sent = TOOL_CONVERSATION[2]["tool_calls"]
    assert [c["function"]["name"] for c in reply.tool_calls] == ["add", "lookup"]
    assert [json.loads(c["function"]["arguments"]) for c in reply.tool_calls] == [
        json.loads(c["function"]["arguments"]) for c in sent
    ]
    assert [c["id"] for c in reply.tool_calls] == ["call_0", "call_1"]


def test_parse_keeps_malformed_or_unknown_blocks_in_the_content():
    text = (
        'Let me see. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>'
        '<tool_call>{"name": "shell", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call>'
        '<tool_call>{"name": "lookup", "arguments": "{\\"q\\": \\"x\\"}"}</tool_call> Done.'
        '<tool_call>{"name": "add", "arguments":'
    )
    reply = parse_completion(text, TOOLS)
    assert reply.content == (
        'Let me see. <tool_call>{"name": "add", "arguments": {"a": 1</tool_call>'
        '<tool_call>{"name": "shell", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call> Done.'
        '<tool_call>{"name": "add", "arguments":'
    )
    assert reply.tool_calls == [
        {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
        },
    ]


def test_parse_content_is_none_only_when_empty_with_calls():
    only_call = parse_completion('\n<tool_call>{"name": "lookup"}</tool_call>\n', TOOLS)
    assert only_call.content is None
    assert only_call.tool_calls[0]["function"] == {"name": "lookup", "arguments": "{}"}
    assert parse_completion("  ", TOOLS) == parse_completion("", None)
    assert parse_completion("  ", TOOLS).content == ""
    # Without tools nothing is a call.
    call = '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    assert parse_completion(call, None).content == call


@pytest.mark.parametrize(
    ("messages", "tools", "tool_choice", "code"),
    [
        ([], None, "auto", "invalid_messages"),
        ([{"role": "robot", "content": "hi"}], None, "auto", "invalid_messages"),
        ([{"content": "hi"}], None, "auto", "invalid_messages"),
        ([{"role": "user", "content": 3}], None, "auto", "invalid_messages"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], None, "auto", "invalid_messages"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "c9", "content": "5"},
            ],
            TOOLS,
            "auto",
            "unknown_tool_call_id",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [_call("c1", "shell", "{}")]}],
            TOOLS,
            "auto",
            "unknown_tool",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [_call("c1", "add", "{a: 1")]}],
            TOOLS,
            "auto",
            "invalid_tool_arguments",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [_call("c1", "add", "[1]")]}],
            TOOLS,
            "auto",
            "invalid_tool_arguments",
        ),
        (
            [{"role": "user", "content": "hi"}],
            TOOLS,
            {"type": "function", "function": {"name": "shell"}},
            "unknown_tool",
        ),
        ([{"role": "user", "content": "hi"}], TOOLS, "sometimes", "invalid_tools"),
        ([{"role": "user", "content": "hi"}], None, "required", "invalid_tools"),
        ([{"role": "user", "content": "hi"}], [{"name": "add"}], "auto", "invalid_tools"),
        ([{"role": "user", "content": "hi"}], [ADD, ADD], "auto", "invalid_tools"),
    ],
)
def test_invalid_requests_raise_a_coded_error(byte, messages, tools, tool_choice, code):
    with pytest.raises(ChatRequestError) as raised:
        byte.render(messages, tools, add_generation_prompt=True, tool_choice=tool_choice)
    assert raised.value.code == code
    assert raised.value.status_code == 400


def test_a_tool_message_answering_an_earlier_call_is_valid(byte):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [_call("c1", "add", "")]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    assert byte.render(messages, TOOLS, add_generation_prompt=True)


def test_a_tokenizer_without_a_chat_template_is_refused():
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        ChatRenderer(tokenizer)
