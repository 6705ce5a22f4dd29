"""Renderers over real tokenizers: the byte tokenizer (ChatML, no tool support in its template),
the same with a tool-aware template, and SmolLM2-135M-Instruct's (loaded once, ~6 s)."""

from __future__ import annotations

import pytest

from keel_worker.agents.chat_format import ChatRenderer
from keel_worker.engines.tokenizer import build_byte_tokenizer

# Qwen2.5's tool layout, cut down: tools listed in the system turn, calls as <tool_call> JSON
# with the arguments printed by `tojson` (so an argument string would show up quoted), results
# as <tool_response> blocks in one user turn.
NATIVE_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n<tools>' }}{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools><|im_end|>\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls %}"
    '{{- \'\n<tool_call>\n{"name": "\' + call.function.name + \'", "arguments": \' }}'
    "{{- call.function.arguments | tojson }}{{- '}\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from keel_worker.engines.smollm2 import smollm2_gguf_path

    path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2(smollm2_tokenizer) -> ChatRenderer:
    return ChatRenderer(smollm2_tokenizer)


@pytest.fixture
def byte() -> ChatRenderer:
    return ChatRenderer(build_byte_tokenizer())


@pytest.fixture
def native() -> ChatRenderer:
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = NATIVE_TOOLS_TEMPLATE
    return ChatRenderer(tokenizer)
