"""An offline byte-level tokenizer for the built-in tiny models.

Owns `build_byte_tokenizer()`: a `PreTrainedTokenizerFast` whose vocabulary is the 256 byte
symbols of GPT-2's byte-level alphabet plus three special tokens, with no BPE merges, so it is
built in code without any download and round-trips every UTF-8 string. It carries a ChatML chat
template so the tiny models exercise the same prompt path as real instruct models.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0..2 are the special tokens, ids 3..258 the 256 bytes."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_order)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({symbol: len(SPECIAL_TOKENS) + i for i, symbol in enumerate(byte_symbols)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: with no merges the GPT-2 word split only costs time.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[],
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


def _byte_order(symbol: str) -> int:
    """Sort the byte-level alphabet by the byte each symbol stands for."""
    return _UNICODE_TO_BYTE[symbol]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-unicode map (the ByteLevel pre-tokenizer's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_UNICODE_TO_BYTE = {symbol: b for b, symbol in _bytes_to_unicode().items()}
