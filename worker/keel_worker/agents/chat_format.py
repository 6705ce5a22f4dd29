"""OpenAI chat requests → token ids through the policy's chat template; completions → tool calls.

Owns `ChatRenderer` (messages + tools → the text and token ids the engine is fed, and the tokens
the template writes after an assistant message), `parse_completion` (a sampled text →
`ParsedReply`), the validation of a request's messages, tools and `tool_choice`, and the one
error it raises, `ChatRequestError`. Messages and tools are plain dicts in the OpenAI chat format.

Tools are rendered in one of two ways:

- natively, when the template's text refers to `tools` (Qwen2.5, Hermes, Llama 3.1, ...): the
  tools, the assistant's `tool_calls` (arguments parsed to objects) and `tool` messages go to the
  template as they are, and the template decides the layout. `tool_choice` "required" or a named
  function has no native rendering (the templates take no such argument) and is not rendered.
- otherwise (SmolLM2, the tiny models' ChatML) keel writes the Hermes format itself: a system
  block that lists the tools as JSON inside `<tools></tools>` and asks for
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (appended to the first system message,
  or a system message of its own; "required" or a named function adds one instruction line), the
  assistant's tool calls written into its text in that form, and tool results as a `user` turn of
  `<tool_response>…</tool_response>` blocks. Not a `tool` role: a template without tool support
  would print it as a role the model never met in training (`<|im_start|>tool`), while the Hermes
  convention, which tool-tuned open models learned, puts tool results in the user turn.

`parse_completion` reads `<tool_call>` blocks either way: the Hermes-style native templates ask
for the same blocks. A native template with another call syntax (Llama 3.1's bare JSON, Mistral's
`[TOOL_CALLS]`) is rendered correctly but its calls stay in the content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, Any]
Tool = dict[str, Any]
# "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}
ToolChoice = str | dict[str, Any]

ROLES = ("system", "user", "assistant", "tool")

ChatErrorCode = Literal[
    "invalid_messages",  # no messages, an unknown role, a malformed message or content
    "invalid_tools",  # malformed tools or tool_choice
    "unknown_tool",  # a tool call or tool_choice naming a function not in `tools`
    "unknown_tool_call_id",  # a tool message answering no earlier assistant tool call
    "invalid_tool_arguments",  # tool-call arguments that are not a JSON object
]

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_TOOLS_INSTRUCTION = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
# A content the probe conversation's assistant says: text that no template rewrites.
_PROBE = "keel-probe-7f3a"


class ChatRequestError(ValueError):
    """A chat request keel cannot render (answered as a 400 with `code` and `detail`)."""

    status_code = 400

    def __init__(self, code: ChatErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ParsedReply:
    """An assistant reply: `content` is None only when it is empty and there are tool calls;
    `tool_calls` are OpenAI dicts with the arguments as JSON text."""

    content: str | None
    tool_calls: list[dict[str, Any]]


class ChatRenderer:
    """Renders OpenAI chat requests with one tokenizer's chat template.

    Token ids are the template's text tokenized without added special tokens (the template holds
    every special token it needs), as `keel_worker.engines.chat.encode_prompt` does.
    """

    def __init__(self, tokenizer: Any) -> None:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError("agent episodes need a tokenizer with a chat template")
        self._tokenizer = tokenizer
        template_text = template if isinstance(template, str) else " ".join(template.values())
        self.native_tools = "tools" in template_text
        self.turn_closing_ids = self._closing_ids()

    def render(
        self,
        messages: list[Message],
        tools: list[Tool] | None = None,
        *,
        add_generation_prompt: bool,
        tool_choice: ToolChoice = "auto",
    ) -> list[int]:
        """Token ids of the rendered request (validated first; `ChatRequestError` if invalid)."""
        text = self.render_text(
            messages, tools, add_generation_prompt=add_generation_prompt, tool_choice=tool_choice
        )
        return self.encode(text)

    def render_text(
        self,
        messages: list[Message],
        tools: list[Tool] | None = None,
        *,
        add_generation_prompt: bool,
        tool_choice: ToolChoice = "auto",
    ) -> str:
        """The template's text for the request (validated first; `ChatRequestError` if invalid)."""
        validate_request(messages, tools, tool_choice)
        shown_tools = [] if tool_choice == "none" else list(tools or [])
        if self.native_tools:
            template_messages = [_native_message(m, messages) for m in messages]
            extra = {"tools": shown_tools} if shown_tools else {}
        else:
            template_messages = _hermes_messages(messages, shown_tools, tool_choice)
            extra = {}
        return self._tokenizer.apply_chat_template(
            template_messages,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **extra,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of a piece of rendered text (no special tokens added)."""
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, sampled_ids: list[int]) -> str:
        """The text of sampled ids as a reply carries it: special tokens (the EOS) left out."""
        return self._tokenizer.decode(sampled_ids, skip_special_tokens=True)

    def _closing_ids(self) -> list[int]:
        probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": _PROBE}]
        text = self.render_text(probe, add_generation_prompt=False)
        end = text.rfind(_PROBE)
        if end < 0:
            raise ValueError("the chat template does not print the assistant's content")
        return self.encode(text[end + len(_PROBE) :])


def parse_completion(text: str, tools: list[Tool] | None) -> ParsedReply:
    """Split a sampled text into content and the `<tool_call>` blocks that call a known tool.

    A block whose JSON is malformed, is not an object with a `name` among `tools`, or whose
    arguments are not an object stays in the content, as the text the model wrote.
    """
    names = {tool["function"]["name"] for tool in tools or []}
    tool_calls: list[dict[str, Any]] = []
    kept: list[str] = []
    position = 0
    for match in _TOOL_CALL.finditer(text):
        call = _parsed_call(match.group(1), names)
        if call is None:
            continue
        kept.append(text[position : match.start()])
        position = match.end()
        name, arguments = call
        tool_calls.append(
            {
                "id": f"call_{len(tool_calls)}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    kept.append(text[position:])
    content = "".join(kept).strip()
    if not content and tool_calls:
        return ParsedReply(content=None, tool_calls=tool_calls)
    return ParsedReply(content=content, tool_calls=tool_calls)


def validate_request(
    messages: list[Message], tools: list[Tool] | None, tool_choice: ToolChoice = "auto"
) -> None:
    """Raise `ChatRequestError` unless the request can be rendered as it means."""
    names = _tool_names(tools)
    _check_tool_choice(tool_choice, names)
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("invalid_messages", "messages must be a non-empty list")
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise ChatRequestError(
                "invalid_messages", f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}"
            )
        message_text(message, where=where)
        if message["role"] == "assistant":
            if not isinstance(message.get("tool_calls") or [], list):
                raise ChatRequestError("invalid_messages", f"{where}.tool_calls must be a list")
            for call in message.get("tool_calls") or []:
                call_ids.add(_checked_call(call, names, where=where)[0])
        if message["role"] == "tool" and message.get("tool_call_id") not in call_ids:
            raise ChatRequestError(
                "unknown_tool_call_id",
                f"{where}.tool_call_id {message.get('tool_call_id')!r} answers no earlier "
                "assistant tool call",
            )


def message_text(message: Message, *, where: str = "message") -> str:
    """A message's content as text: None is empty, a list of text parts is joined by newlines
    (each part its own paragraph)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") in ("assistant", "system"):
        return ""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    raise ChatRequestError(
        "invalid_messages", f"{where}.content must be a string or a list of text parts"
    )


def call_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """The parsed arguments of an (already validated) OpenAI tool call."""
    return json.loads(call["function"]["arguments"] or "{}")


def _tool_names(tools: list[Tool] | None) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise ChatRequestError("invalid_tools", "tools must be a list")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or tool.get("type") != "function":
            raise ChatRequestError(
                "invalid_tools",
                f'tools[{index}] must be {{"type": "function", "function": {{"name": ...}}}}',
            )
        if name in names:
            raise ChatRequestError("invalid_tools", f"tools name {name!r} twice")
        names.add(name)
    return names


def _check_tool_choice(tool_choice: ToolChoice, names: set[str]) -> None:
    if tool_choice in ("none", "auto"):
        return
    if tool_choice == "required":
        if not names:
            raise ChatRequestError("invalid_tools", 'tool_choice "required" needs tools')
        return
    name = _chosen_name(tool_choice)
    if name is None:
        raise ChatRequestError(
            "invalid_tools",
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
        )
    if name not in names:
        raise ChatRequestError("unknown_tool", f"tool_choice names {name!r}, not among the tools")


def _chosen_name(tool_choice: ToolChoice) -> str | None:
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        return None
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _checked_call(call: Any, names: set[str], *, where: str) -> tuple[str, str]:
    """(id, name) of a well-formed assistant tool call to a known tool."""
    function = call.get("function") if isinstance(call, dict) else None
    if (
        not isinstance(function, dict)
        or not isinstance(call.get("id"), str)
        or not isinstance(function.get("name"), str)
    ):
        raise ChatRequestError(
            "invalid_messages",
            f'{where}.tool_calls entries must be {{"id", "type": "function", '
            '"function": {"name", "arguments"}}',
        )
    if function["name"] not in names:
        raise ChatRequestError(
            "unknown_tool", f"{where} calls {function['name']!r}, not among the tools"
        )
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ChatRequestError(
            "invalid_tool_arguments",
            f"{where} calls {function['name']!r} with arguments that are not a JSON object",
        )
    return call["id"], function["name"]


def _native_message(message: Message, messages: list[Message]) -> Message:
    """A message as tool-aware templates take it: arguments as objects, tool results named."""
    role = message["role"]
    rendered: Message = {"role": role, "content": message_text(message)}
    if role == "assistant" and message.get("tool_calls"):
        rendered["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": call_arguments(call)},
            }
            for call in message["tool_calls"]
        ]
    if role == "tool":
        rendered["tool_call_id"] = message["tool_call_id"]
        rendered["name"] = _name_of_call(message["tool_call_id"], messages)
    return rendered


def _name_of_call(call_id: str, messages: list[Message]) -> str:
    for message in messages:
        for call in message.get("tool_calls") or []:
            if call["id"] == call_id:
                return call["function"]["name"]
    raise AssertionError("validated: every tool message answers an earlier call")


def _hermes_messages(
    messages: list[Message], tools: list[Tool], tool_choice: ToolChoice
) -> list[Message]:
    """The request in plain system/user/assistant turns (the Hermes format, module docstring)."""
    rendered: list[Message] = []
    after_tool = False
    for message in messages:
        role, text = message["role"], message_text(message)
        if role == "tool":
            block = f"<tool_response>\n{text}\n</tool_response>"
            # Consecutive results answer one assistant turn: one user turn holds them all.
            if after_tool:
                rendered[-1]["content"] += "\n" + block
            else:
                rendered.append({"role": "user", "content": block})
        elif role == "assistant":
            parts = [text] if text else []
            parts += [_hermes_call(call) for call in message.get("tool_calls") or []]
            rendered.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            rendered.append({"role": role, "content": text})
        after_tool = role == "tool"
    if tools:
        block = _hermes_tools_block(tools, tool_choice)
        if rendered[0]["role"] == "system":
            rendered[0]["content"] = f"{rendered[0]['content']}\n\n{block}".lstrip("\n")
        else:
            rendered.insert(0, {"role": "system", "content": block})
    return rendered


def _hermes_tools_block(tools: list[Tool], tool_choice: ToolChoice) -> str:
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    block = _TOOLS_INSTRUCTION.format(tools=listing)
    if tool_choice == "required":
        block += "\n\nYou must call at least one function."
    elif (name := _chosen_name(tool_choice)) is not None:
        block += f"\n\nYou must call the function {name}."
    return block


def _hermes_call(call: dict[str, Any]) -> str:
    payload = {"name": call["function"]["name"], "arguments": call_arguments(call)}
    return f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>"


def _parsed_call(body: str, names: set[str]) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) of one `<tool_call>` body, or None when it is not a call to a tool."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or payload.get("name") not in names:
        return None
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):
        # Some models write the arguments as JSON text inside the JSON, as the wire carries them.
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return (payload["name"], arguments) if isinstance(arguments, dict) else None
