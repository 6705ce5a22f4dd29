"""The results of `bench.agent_serving`: what a call's added time splits into, the targets, the
summary over repeats and the markdown report (`bench/results/agent_serving.md`)."""

from __future__ import annotations

import statistics
from typing import Any

TARGET_RATIO = 0.8
TARGET_ADDED_P50_S = 0.020
# A call's round trip minus its batch's generate (`added`) is the sum of `PARTS` (`_segments`):
# the request reaching the queue, the gather (and any batch that ran before this one), rendering
# the batch's prompts, decoding and answering the batch up to this call, the response's way back.
# `in_server` is gather + render + answer: from the queue to the reply, generate aside.
PARTS = ("request", "gather", "render", "answer", "response")
SEGMENTS = ("added", "in_server", *PARTS)


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repeats; the added latency's quantiles over every call of every repeat."""
    repeats = record["repeats"]
    engine = statistics.median(r["engine"]["tokens_per_s"] for r in repeats)
    served = statistics.median(r["served"]["tokens_per_s"] for r in repeats)
    added = sorted(c["added_s"] for r in repeats for c in r["served"]["calls"])
    p50 = statistics.median(added)

    def p50_of(side: str, segment: str) -> float:
        return statistics.median(c[f"{segment}_s"] for r in repeats for c in r[side]["calls"])

    return {
        "engine_tokens_per_s": engine,
        "served_tokens_per_s": served,
        "ratio": served / engine,
        "repeat_ratios": [
            r["served"]["tokens_per_s"] / r["engine"]["tokens_per_s"] for r in repeats
        ],
        "added_p50_s": p50,
        "added_p90_s": added[int(0.9 * (len(added) - 1))],
        "added_max_s": added[-1],
        "segments_p50_s": {
            side: {k: p50_of(side, k) for k in SEGMENTS} for side in ("served", "floor")
        },
        "ratio_target_met": served / engine >= TARGET_RATIO,
        "latency_target_met": p50 <= TARGET_ADDED_P50_S,
    }


def report(record: dict[str, Any]) -> str:
    w, m, s, p = record["work"], record["machine"], record["summary"], record["prompt_tokens"]
    lines = [
        "# Agent serving: concurrent episodes through the policy server",
        "",
        "Written by `python -m bench.agent_serving`; what each side's clock includes is in its "
        "docstring.",
        "",
        f"`{w['model']}` ({w['precision']}), {w['episodes']} episodes × {w['calls']} calls, "
        f"prompts of {p['min']}–{p['max']} tokens (mean {p['mean']:.0f}), exactly "
        f"{w['new_tokens']} new tokens per call (EOS ignored), T = {w['temperature']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['arch']}); torch threads "
        f"{m['torch_threads']}. Load before: `{record['uptime_before']}`; after: "
        f"`{record['uptime_after']}`.",
        "",
        "| repeat | engine tokens/s | served tokens/s | served / engine | served batches "
        "| added p50 ms | in-server p50 ms | floor added p50 ms | 1-min load after |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(record["repeats"]):
        e, v, f = r["engine"], r["served"], r["floor"]
        lines.append(
            f"| {i + 1} | {e['tokens_per_s']:.1f} | {v['tokens_per_s']:.1f} | "
            f"{v['tokens_per_s'] / e['tokens_per_s']:.3f} | {v['batches']} | "
            f"{1000 * v['added_p50_s']:.1f} | {1000 * v['in_server_p50_s']:.1f} | "
            f"{1000 * f['added_p50_s']:.1f} | {r['load'][0]} |"
        )
    verdict = {True: "met", False: "not met"}
    lines += [
        "",
        f"Median served / engine tokens/s: **{s['ratio']:.3f}** (target ≥ {TARGET_RATIO}: "
        f"{verdict[s['ratio_target_met']]}). Added latency per call over all repeats: p50 "
        f"**{1000 * s['added_p50_s']:.1f} ms** (target ≤ {1000 * TARGET_ADDED_P50_S:.0f} ms: "
        f"{verdict[s['latency_target_met']]}), p90 {1000 * s['added_p90_s']:.1f} ms, max "
        f"{1000 * s['added_max_s']:.1f} ms. Of that, in the server (queue, gather, rendering, "
        f"answering; generate aside): p50 **{1000 * s['segments_p50_s']['served']['in_server']:.1f}"
        f" ms**; the same harness against a loop that answers at once: p50 "
        f"{1000 * s['segments_p50_s']['floor']['added']:.1f} ms.",
        "",
        "Where the added time goes, p50 over all calls of all repeats, in ms (`served`: the "
        "policy; `floor`: the same clients against a loop that answers at once, what HTTP and "
        "the clients alone cost here):",
        "",
        "| side | " + " | ".join(SEGMENTS) + " |",
        "|---|" + "---:|" * len(SEGMENTS),
    ]
    for side, segments in s["segments_p50_s"].items():
        cells = " | ".join(f"{1000 * segments[k]:.1f}" for k in SEGMENTS)
        lines.append(f"| {side} | {cells} |")
    lines.append("")
    return "\n".join(lines)
