"""Stop strings: a completion ends at the first token whose decoded prefix contains one.

The engine stops on token ids only; with stop strings it samples up to `max_tokens` (stopping at
EOS) and the completion is cut here at the token that completes the first stop string, which is
kept, as a stop token is.
"""

from __future__ import annotations

from keel_worker.tinker.batch import SampledSequence


def apply_stop_strings(sequence: SampledSequence, stops: list[str], tokenizer) -> SampledSequence:
    """`sequence` cut after the token that completes the earliest stop string, reason "stop";
    unchanged when none occurs."""
    for end in range(1, len(sequence.tokens) + 1):
        text = tokenizer.decode(sequence.tokens[:end])
        if any(stop in text for stop in stops):
            return SampledSequence(sequence.tokens[:end], sequence.logprobs[:end], "stop")
    return sequence
