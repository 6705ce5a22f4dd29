"""The stress suite's verdicts by the fidelity rules (`fidelity`), the goals table, the two figures
and the guard's out-of-sample table, as REPORT.md lines. Rebuilt from the saved runs and
`results/guard/out_of_sample.json` alone (a JSON file, not an import of the guard modules).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from research.stability import fidelity, fidelity_goals, fidelity_stats, reruns, reruns_verdicts
from research.stability.figures_fidelity import delta_vs_n_figure, map_delta_figure
from research.stability.findings import Finding


def image_link(alt: str, path: Path, report_dir: Path) -> str:
    return f"![{alt}]({Path(os.path.relpath(path, report_dir)).as_posix()})"


def _rules_text() -> list[str]:
    doc = fidelity.__doc__ or ""
    body = doc.split("\n\n", 2)[2] if doc.count("\n\n") >= 2 else doc
    return [body.strip(), ""]


def fidelity_section(
    run_rows: list[dict[str, Any]],
    aliases: dict[str, str],
    first: list[Finding],
    out_dir: Path,
    report_dir: Path,
) -> list[str]:
    judged = fidelity.judge_all(run_rows, aliases)
    first_by_key = {f.key: f.verdict for f in first}
    first_by_key["F4a"] = first_by_key["F4b"] = first_by_key.get("F4", "")
    rows = fidelity.group(run_rows, aliases)
    lines = [
        "## Verdicts by the fidelity rules",
        "",
        "These verdicts replace the first rules' (kept below, under *Findings in the stress "
        "regime*, for the record). The rules, declared in `research/stability/fidelity.py` "
        "and committed before they were applied to any run:",
        "",
        *_rules_text(),
        "Constants: "
        + ", ".join(f"`{name}` = {getattr(module, name):g}" for module, name in CONSTANTS)
        + ".",
        "",
        _plainly(judged),
        "",
        "| finding | verdict | first rules' verdict |",
        "|---|---|---|",
        *[
            f"| {j.key}. {j.title} | **{j.verdict}** | {first_by_key.get(j.key, '–')} |"
            for j in judged
        ],
        "",
    ]
    for j in judged:
        lines += [f"#### {j.key}. {j.title} — **{j.verdict}**", "", f"*Claim:* {j.claim}", ""]
        lines += [f"- {line}" for line in j.lines] + [""]
    lines += _goals(run_rows)
    figures = out_dir / "figures"
    delta_vs_n_figure(rows, figures / "delta_vs_n.png")
    drawn = map_delta_figure(rows, figures / "map_delta.png")
    lines += [
        "### Figures",
        "",
        "Δ held-out accuracy (final − start) against N, one dot per seed (red: collapsed by the "
        "moving-mean criterion), per recipe, at the regime's rung; grey: the evaluation-noise "
        "band of rule 6; the last panel: measured per-token k3 and clip fraction per N.",
        "",
        image_link("delta vs N", figures / "delta_vs_n.png", report_dir),
        "",
        "The stability map as Δ from the start on a diverging scale fitted to the data "
        f"(±{drawn['limit']:.2f}); each rung titled with its measured k3.",
        "",
        image_link("stability map as delta", figures / "map_delta.png", report_dir),
        "",
    ]
    lines += guard_section(out_dir.parent.parent / "guard" / "out_of_sample.json")
    lines += reruns_section(out_dir)
    return lines


def reruns_section(out_dir: Path) -> list[str]:
    """The fidelity reruns: the plan declared in `reruns`, what it cuts, and each part's state
    or verdict by `reruns_verdicts`."""
    probe_file = out_dir / "discrepancy.csv"
    if not probe_file.is_file():
        return []
    probe = reruns.read_probe(out_dir)
    doc = reruns.__doc__ or ""
    cut = next((b for b in doc.split("\n\n") if b.startswith("**Cut**")), "")
    results = reruns_verdicts.judge_reruns(out_dir, probe)
    lines = [
        "### Reruns",
        "",
        "Declared in `research/stability/reruns.py` (rules, rung choice, budget, one CPU kind per "
        "part); each part runs with `python -m research.stability rerun --part NAME` into "
        "`stress/reruns/NAME/`, resumably, under two hours on 2 cores by the declared estimate. "
        "The GPU part is `scripts/gpu_fidelity.sh`, seven parts of under 10 "
        "minutes each (what it cuts is in `scripts/gpu_fidelity.py`). A part is judged by "
        "the rules in `research/stability/reruns_verdicts.py` once all its runs are in, and "
        "only when they come from one kind of CPU (the map, in blocks of one seed, is read across "
        "kinds by differences within a seed); until then only its count of runs shows.",
        "",
        "```text",
        *reruns.plan_lines(probe),
        "```",
        "",
        " ".join(line.strip() for line in cut.splitlines()),
        "",
        "| part | runs in | CPU | verdict |",
        "|---|---|---|---|",
        *[
            f"| `{r.name}`: {r.what} | {r.done}/{r.expected} | {', '.join(r.cpus) or '–'} "
            f"| {_verdict_cell(r)} |"
            for r in results
        ],
        "",
    ]
    for r in results:
        if r.verdict not in (reruns_verdicts.NOT_JUDGED, reruns_verdicts.CUT):
            lines += [f"#### `{r.name}` — **{r.verdict}**", "", f"*{r.what}.*", ""]
            lines += [f"- {line}" for line in r.lines] + [""]
    return lines


def _verdict_cell(r: reruns_verdicts.PartResult) -> str:
    if r.verdict == reruns_verdicts.CUT:
        return f"cut: {r.lines[0]}"
    return r.verdict if r.verdict == reruns_verdicts.NOT_JUDGED else f"**{r.verdict}**"


# The rules' constants as REPORT.md lists them, each from the module that declares it.
CONSTANTS = (
    (fidelity_stats, "SMOOTH_EVALS"),
    (fidelity_stats, "CI"),
    (fidelity_stats, "BOOTSTRAP_RESAMPLES"),
    (fidelity_stats, "BOOTSTRAP_SEED"),
    (fidelity, "K3_FLOOR"),
    (fidelity, "ROUTING_FLOOR"),
    (fidelity_stats, "NOISE_Z"),
    (fidelity_stats, "F8_PERMUTATIONS"),
    (fidelity, "F8_ALPHA"),
    (fidelity_goals, "SEQUENCE_KL_GOAL"),
    (fidelity_goals, "SEEDS_GOAL"),
    (fidelity_goals, "POWER_AT"),
    (fidelity_goals, "POWER_SIMULATIONS"),
)


def _plainly(judged: list[fidelity.Judged]) -> str:
    """One sentence: how many verdicts of each kind, and which findings."""
    by: dict[str, list[str]] = {}
    for j in judged:
        by.setdefault(j.verdict, []).append(j.key)
    parts = [f"{v}: {', '.join(keys)}" for v, keys in sorted(by.items(), key=lambda x: -len(x[1]))]
    return f"In plain words, of {len(judged)} verdicts — " + "; ".join(parts) + "."


def _goals(run_rows: list[dict[str, Any]]) -> list[str]:
    goals = fidelity_goals.goals(run_rows)
    collapses = [r for r in run_rows if r["collapsed_first_rule"]]
    shock = [r for r in collapses if r["collapse_step"] != "" and _first_rule_step(r) <= 8]
    mark = {True: "met", False: "**not met**", None: "–"}
    return [
        "### What the testbed reached against its goals",
        "",
        "Computed from the stress runs (`fidelity_goals.goals`; the mismatch rows over the runs "
        "with a mismatch dial, the fp32 rung left out). The per-token KL is the run's mean of the "
        "per-step k3 estimate; the paper's collapses come with tens of nats per response.",
        "",
        "| quantity | goal | reached | |",
        "|---|---|---|---|",
        *[f"| {g.what} | {g.goal} | {g.reached} | {mark[g.met]} |" for g in goals],
        f"| collapses the first criterion dates at grad step ≤ 8 (row added after the table's "
        f"first output: the moving mean dates a collapse one evaluation later at the earliest) "
        f"| – | {len(shock)} of {len(collapses)} | – |",
        "",
    ]


def _first_rule_step(row: dict[str, Any]) -> float:
    step = row.get("first_rule_step")
    return math.inf if step in ("", None) else float(step)


def guard_section(path: Path) -> list[str]:
    """The guard's out-of-sample table from `research.guard_oos`'s JSON, if it has run."""
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    oos = next(iter(result["scores"].values()))["all out of sample"]
    lines = [
        "### The guard out of sample",
        "",
        f"The guard's defaults frozen as commit `{result['frozen_at'][:10]}` left them, scored "
        "without refitting on runs that played no part in choosing them (suite runs committed "
        "after that commit, the fidelity reruns, guard service jobs the guard never acted on, "
        "`make demo`'s job); "
        "the demo rule (an entropy drop alerts only with a reward fall) beside them. Rules in "
        "`research/guard_oos.py`; per-run detail in `research/results/guard/out_of_sample.md`. "
        f"The fit saw {result['in_sample_listed']} runs; the in-sample rows replay the "
        f"{_in_sample_runs(result)} of them the tree still holds (the others, superseded AVX2 "
        "runs, have left it). A service job's stored metrics hold entropy, reward, KL and "
        "held-out accuracy only, and its cells are suite cells (`A/lr0.003/fp32/N1/reinforce`, "
        "`N4/minirl-noclip`, `N1/minirl`, `N4/minirl+R3`) run again as jobs: new runs of "
        f"configurations the fit knew, not new configurations. {oos['runs']} runs with "
        f"{oos['collapsing']} collapses is a small out-of-sample set.",
        "",
        *guard_table(result),
    ]
    return [*lines, ""]


def _in_sample_runs(result: dict[str, Any]) -> int:
    per_set = next(iter(result["scores"].values()))
    return next(s["runs"] for name, s in per_set.items() if name.startswith("in sample"))


def guard_table(result: dict[str, Any]) -> list[str]:
    """One row per (defaults, run set) of `research.guard_oos`'s result."""
    lines = [
        "| defaults | runs | stable runs alarmed | alarms per stable run "
        "| collapses caught before the fall | alerted at all | leads (grad steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, per_set in result["scores"].items():
        for name, s in per_set.items():
            per = s["alarms_per_stable_run"]
            leads = ", ".join("–" if x is None else str(x) for x in s["leads"]) or "–"
            lines.append(
                f"| {label}: {name} | {s['runs']} ({s['collapsing']} collapsing) | "
                f"{s['stable_alarmed']}/{s['stable']} | {'–' if per is None else f'{per:.2f}'} | "
                f"{s['caught_before']}/{s['collapsing']} | {s['alerted_at_all']}/"
                f"{s['collapsing']} | {leads} |"
            )
    return lines
