from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.tokenizer import build_byte_tokenizer


def test_bytes_round_trip_and_special_ids() -> None:
    tokenizer = build_byte_tokenizer()
    text = "héllo 1+2 = 3\n✓"
    ids = tokenizer(text)["input_ids"]
    # One id per UTF-8 byte: é is 2 bytes, ✓ is 3 bytes.
    assert len(ids) == len(text.encode())
    assert tokenizer.decode(ids) == text
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 259
    # "A" is byte 65 and bytes start at id 3.
    assert tokenizer("A")["input_ids"] == [68]


def test_chat_template_and_save_pretrained(tmp_path: Path) -> None:
    tokenizer = build_byte_tokenizer()
    ids = encode_prompt(tokenizer, "hi")
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert encode_prompt(reloaded, "hi") == ids
    assert reloaded.eos_token_id == 2
