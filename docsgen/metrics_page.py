"""`reference/metrics.md`: the one metric vocabulary (`keel.types.metric_names`), its fixed names
grouped by area (the part before the `/`) and the three families built from a fixed part."""

from __future__ import annotations

from typing import get_args

from docsgen.markdown import code, generated_note, heading, one_line, page, table
from keel.types import metric_names as names
from keel.types.guard import TriggerName


def areas() -> dict[str, list[str]]:
    """The fixed names by area, in the vocabulary's own order."""
    grouped: dict[str, list[str]] = {}
    for name in names.METRICS:
        grouped.setdefault(name.split("/", 1)[0], []).append(name)
    return grouped


def families() -> list[tuple[list[str], str]]:
    """(the names a family stands for, what they measure): per MoE layer, per guard trigger
    and per evaluation metric after the last step."""
    per_layer = [
        code(f"{prefix}_L<i>")
        for prefix in (names.ROUTING_INFER_VS_TRAIN, names.ROUTING_OLD_VS_CURRENT)
    ]
    triggers = [code(names.guard_trigger(t)) for t in get_args(TriggerName)]
    finals = [code(names.final(metric)) for metric in names.EVAL_METRICS]
    return [
        (per_layer, one_line(names.per_layer.__doc__) + " `i` counts the MoE layers from 0."),
        (triggers, one_line(names.guard_trigger.__doc__)),
        (finals, one_line(names.final.__doc__)),
    ]


def metrics_page() -> str:
    blocks = [
        "# Metrics",
        generated_note("`keel.types.metric_names`"),
        "A metric is named `area/name` and written once per job and step. "
        "`GET /v1/jobs/{job_id}/metrics` serves them, the dashboard charts them, and "
        "`config.logging` mirrors them to TensorBoard or W&B under the same names. A value that "
        "was not finite at its step is served as null.",
    ]
    for area, members in areas().items():
        rows = [(code(name), names.METRICS[name]) for name in members]
        blocks += [
            heading(2, code(f"{area}/"), f"area-{area}"),
            table(("metric", "what it measures"), rows),
        ]
    blocks += [
        heading(2, "Families", "families"),
        "Names built from a fixed part; each is documented as the pattern it follows.",
        table(("names", "what they measure"), [(", ".join(n), what) for n, what in families()]),
    ]
    return page(blocks)
