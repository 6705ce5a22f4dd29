"""REPORT.md, summary CSVs and figures, rebuilt from the saved runs alone.

Inputs under the results directory: `runs/` (per-run CSV + JSON), `coldstarts.json` and
`discrepancy.csv` (written by `run`), and the hand-written `interpretation.md` whose `## F<k>`
sections (our explanations, written after reading the numbers) are spliced under each finding
and whose `## Notes` section closes the findings.
Outputs: `summary_runs.csv`, `summary_cells.csv`, `figures/<regime>.png` and `REPORT.md`.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from research.stability import criterion
from research.stability.figures import regime_figure
from research.stability.findings import Finding, evaluate_findings
from research.stability.matrix import Budget, cells_for
from research.stability.report_stress import cold_start_table, image_link, stress_section
from research.stability.results import Run, cell_summaries, load_runs, run_summary, write_csv

REGIME_TITLES = {
    "on_policy": "On-policy (N = 1), fp8 rollouts",
    "off_policy_N2": "Off-policy N = 2, fp8 rollouts",
    "off_policy_N4": "Off-policy N = 4, fp8 rollouts",
    "off_policy_N8": "Off-policy N = 8, fp8 rollouts",
    "cold_start": "Cold starts under MiniRL + R2, N = 2",
    "precision_bf16": "On-policy (N = 1), bf16 rollouts",
}


def _by_regime(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run.meta["regime"]][run.cell].append(run)
        if run.cell == "N2/minirl+R2":  # the balanced cold start belongs to both figures
            grouped["cold_start"][run.cell].append(run)
    return grouped


def _interpretations(out_dir: Path) -> dict[str, str]:
    path = out_dir / "interpretation.md"
    if not path.is_file():
        return {}
    sections = re.split(r"^## (F\d+|Notes)\s*$", path.read_text(), flags=re.M)
    return {key: body.strip() for key, body in zip(sections[1::2], sections[2::2], strict=True)}


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


def _criterion_section() -> list[str]:
    c = criterion
    return [
        "## Collapse criterion (declared before any matrix result)",
        "",
        "Defined in `research/stability/criterion.py` and applied identically to every run:",
        "",
        f"1. **Performance collapse**: from some evaluation on, held-out accuracy stays below "
        f"{c.COLLAPSE_FRACTION:g} × its running peak for every remaining evaluation (at least "
        f"{c.MIN_TAIL_EVALS} evaluations), with a peak of at least {c.MIN_PEAK:g}.",
        f"2. **Degenerate entropy collapse**: mean entropy of the last {c.TAIL_STEPS} steps below "
        f"{c.ENTROPY_FRACTION:g} × that of the first {c.TAIL_STEPS}, while the final held-out "
        f"accuracy (mean of the last {c.TAIL_EVALS} evaluations) is below the initial one.",
        "3. **Numerical failure**: a non-finite loss, gradient norm or entropy, or a crashed run.",
        "",
        f"Cells are compared on per-seed final held-out accuracy: A beats B when the difference "
        f"of means exceeds both {c.MIN_EFFECT:g} and {c.SE_MULTIPLIER:g} standard errors "
        f"(Welch) with at least {c.MIN_SEEDS} seeds on each side (this minimum was added while "
        f"the matrix ran, when a deadline threatened to leave cells with one seed; every cell "
        f"got 3, so it changes no verdict), or when B collapsed in a "
        f"majority of seeds and A in none. Otherwise the two are indistinguishable at our scale.",
        "",
    ]


def _setup_section(runs: list[Run], out_dir: Path) -> list[str]:
    lines = ["## Setup", ""]
    if runs:
        b = runs[0].meta["budget"]
        lines += [
            "- Model: `tiny-moe` (Qwen3-MoE, 4 layers, hidden 128, 8 experts, top-2, byte-level "
            "tokenizer), trained in fp32; rollouts from a separate engine copy at reduced "
            "precision.",
            "- Task: 2–3 digit addition `a+b=`, exact-answer reward; 4,096 RL prompts, held-out "
            f"accuracy on {b['eval_prompts']} disjoint prompts × {b['eval_samples']} samples at "
            "T=1 (greedy accuracy in the CSVs too).",
            f"- Schedule: every update uses B={b['prompts_per_minibatch']} prompts × "
            f"G={b['group_size']} responses; N mini-batches per global step; {b['grad_steps']} "
            f"gradient steps per run; AdamW lr {b['lr']:g}, grad clip {b['grad_clip']}; "
            f"max {b['max_new_tokens']} new tokens; seeds {b['seeds']}.",
            "- Learning rate: the largest of {1e-4, 3e-4, 1e-3, 3e-3} at which a pilot of "
            "on-policy MiniRL alone (seed 0, 96 steps) ended above its initial held-out accuracy "
            "(pilot CSVs in `pilot/`, rule in `research/stability/matrix.py`); no ablation cell "
            "was looked at before the matrix ran.",
        ]
    if table := cold_start_table(out_dir):
        lines += ["", "Cold starts (SFT until the pass rate at T=1 reaches the target):", ""]
        lines += table
    return [*lines, ""]


def _discrepancy_section(out_dir: Path) -> list[str]:
    path = out_dir / "discrepancy.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    keys = (
        "kl_k1",
        "kl_k3",
        "prob_diff_mean",
        "prob_diff_max",
        "r3_kl_k1",
        "r3_kl_k3",
        "routing_layer_frac",
        "routing_any_frac",
    )
    lines = [
        "## Training–inference discrepancy of the cold starts",
        "",
        "Engine at each precision vs the fp32 trainer on the same sampled tokens (`probe.py`); "
        "`r3_*` rescore with the engine's routes replayed.",
        "",
        "| init | precision | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for r in rows:
        lines.append(
            f"| {r['init']} | {r.get('dial', r.get('precision'))} | "
            + " | ".join(f"{float(r[k]):.2e}" for k in keys)
            + " |"
        )
    return [*lines, ""]


def _coverage_section(runs: list[Run]) -> list[str]:
    """Which (cell, seed) runs of the budgeted matrix are missing, e.g. cut by the deadline."""
    if not runs:
        return []
    b = runs[0].meta["budget"]
    budget = Budget(**{**b, "seeds": tuple(b["seeds"]), "cells": tuple(b["cells"])})
    done = {(r.cell, r.meta["seed"]) for r in runs}
    missing = [
        (c.name, s) for s in budget.seeds for c in cells_for(budget) if (c.name, s) not in done
    ]
    lines = ["## Coverage", ""]
    if not missing:
        return [*lines, f"Every cell ran with every seed of {budget.seeds}.", ""]
    by_seed: dict[int, list[str]] = defaultdict(list)
    for name, seed in missing:
        by_seed[seed].append(f"`{name}`")
    lines.append(f"{len(done)} of {len(done) + len(missing)} budgeted runs completed. Missing:")
    lines.append("")
    lines += [f"- seed {seed}: {', '.join(names)}" for seed, names in sorted(by_seed.items())]
    return [*lines, ""]


def _cells_table(cells: list[dict[str, Any]]) -> list[str]:
    head = (
        "cell",
        "seeds",
        "collapsed",
        "initial acc",
        "peak acc",
        "final acc",
        "final greedy",
        "entropy start→end",
        "KL k1",
        "clip frac",
        "IS trunc",
        "route≠ (infer/train)",
        "route≠ (old/current)",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{c['cell']}`",
                    str(c["seeds"]),
                    str(c["collapsed"]),
                    _fmt(c["initial_acc_mean"]),
                    _fmt(c["peak_acc_mean"]),
                    f"{_fmt(c['final_acc_mean'])} ± {_fmt(c['final_acc_sd'])}",
                    _fmt(c["final_greedy_acc_mean"]),
                    f"{_fmt(c['entropy_start_mean'], 2)}→{_fmt(c['entropy_end_mean'], 2)}",
                    f"{c['mean_kl_k1']:.1e}",
                    _fmt(c["mean_clip_frac"], 4),
                    _fmt(c["mean_is_trunc_frac"], 4),
                    _fmt(c["mean_routing_infer_vs_train"], 4),
                    _fmt(c["mean_routing_old_vs_current"], 4),
                ]
            )
            + " |"
        )
    return lines


def _finding_section(f: Finding, notes: dict[str, str]) -> list[str]:
    return [
        f"### {f.key}. {f.title} — **{f.verdict}**",
        "",
        f"*Paper:* {f.claim}",
        "",
        *[f"- {line}" for line in f.lines],
        "",
        notes.get(f.key, "*Interpretation:* not written yet."),
        "",
    ]


def build_report(out_dir: Path | None, *, stress_dir: Path | None = None) -> Path:
    """Rebuild every derived artifact from the saved runs; one REPORT.md for both suites.

    `out_dir` is the gentle suite's results (None: a stress-only report, e.g. its quick mode);
    the stress suite's results are `stress_dir`, by default `out_dir/stress` when it exists.
    """
    if stress_dir is None and out_dir is not None and (out_dir / "stress").is_dir():
        stress_dir = out_dir / "stress"
    report_dir = out_dir if out_dir is not None else stress_dir
    stress_lines = stress_section(stress_dir, report_dir) if stress_dir is not None else []
    if out_dir is None:
        assert stress_dir is not None, "build_report needs a gentle or a stress results dir"
        report = stress_dir / "REPORT.md"
        report.write_text("\n".join(stress_lines))
        return report
    runs = load_runs(out_dir)
    run_rows = [run_summary(r) for r in runs]
    write_csv(out_dir / "summary_runs.csv", run_rows)
    cells = cell_summaries(run_rows)
    write_csv(out_dir / "summary_cells.csv", cells)
    figures = []
    for regime, by_cell in _by_regime(runs).items():
        path = out_dir / "figures" / f"{regime}.png"
        regime_figure(dict(by_cell), REGIME_TITLES.get(regime, regime), path)
        figures.append((regime, path))
    findings = evaluate_findings(run_rows)
    notes = _interpretations(out_dir)
    lines = [
        "# Stability findings of the paper, reproduced at small scale",
        "",
        "Generated by `python -m research.stability report` from the runs under `runs/`; the "
        "interpretations come from `interpretation.md`. Paper: Zheng et al., *Stabilizing "
        "Reinforcement Learning with LLMs: Formulation and Practices* (arXiv 2512.01374). "
        "Reproduce with `python -m research.stability run --full` (cold starts are cached under "
        "`.cache/keel/stability`); rebuild this file with `python -m research.stability report`.",
        "",
        *_criterion_section(),
        *_setup_section(runs, out_dir),
        *_discrepancy_section(out_dir),
        *_coverage_section(runs),
        "## Findings",
        "",
        "| finding | verdict |",
        "|---|---|",
        *[f"| {f.key}. {f.title} | {f.verdict} |" for f in findings],
        "",
        *[line for f in findings for line in _finding_section(f, notes)],
        *(["## Notes", "", notes["Notes"], ""] if "Notes" in notes else []),
        "## All cells",
        "",
        *_cells_table(cells),
        "",
        "## Figures",
        "",
        "Mean over seeds with a min–max band; reward and KL smoothed over 5 steps. The per-batch "
        "k1 estimate of the KL is noisy and can be ≤ 0; such points are drawn at 1e-6.",
        "",
        *[image_link(regime, path, out_dir) for regime, path in figures],
        "",
        "## Runs and collapse verdicts",
        "",
        "| cell | seed | collapsed | reason | step | final acc |",
        "|---|---|---|---|---|---|",
        *[
            f"| `{r['cell']}` | {r['seed']} | {r['collapsed']} | {r['reason']} | "
            f"{r['collapse_step']} | {_fmt(r['final_acc'])} |"
            for r in run_rows
        ],
        "",
        *(
            ["---", "", *[f"#{line}" if line.startswith("#") else line for line in stress_lines]]
            if stress_lines
            else []
        ),
    ]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines))
    return report
