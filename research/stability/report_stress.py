"""The stress suite's part of REPORT.md: the dials, the regime rules and their pilots, the
discrepancy each dial creates, then the findings, F9 and the stability map as far as they ran.

Everything is rebuilt from files under the stress results directory: `coldstarts.json`,
`discrepancy.csv`, `pilot/runs/`, `regime.json`, `runs/` and whether `coldstart/` holds committed
cold starts.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

from research.stability import fidelity_stats, stress
from research.stability.criterion import COLLAPSE_FRACTION, MIN_SEEDS
from research.stability.figures import collapse_figure, stability_map_figure
from research.stability.findings import FINDINGS, better, dppo_critique, evaluate_findings
from research.stability.report_fidelity import fidelity_section
from research.stability.results import (
    UNRECORDED_CPU,
    Run,
    cell_summaries,
    load_runs,
    run_summary,
)
from research.stability.suites import STRESS

PROBE_KEYS = (
    "kl_k1",
    "kl_k3",
    "prob_diff_mean",
    "prob_diff_max",
    "seq_log_ratio_p05",
    "seq_log_ratio_p95",
    "tis_cap_hit_frac",
    "sampling_kl",
    "routing_layer_max",
    "routing_any_frac",
)


def _f(value, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number != number:
        return "–"
    return f"{number:.2e}" if abs(number) < 1e-2 and number != 0 else f"{number:.{digits}f}"


def _intro() -> list[str]:
    budget = STRESS.full
    return [
        "# Stress suite",
        "",
        "Where the gentle suite could not make anything collapse, the stress suite turns up the "
        "three causes the paper names (paper §2.4, §3.1), each a real, measured mechanism "
        "(`research/stability/suites.py`):",
        "",
        "- **Training–inference mismatch**: rollouts quantized as serving stacks do — "
        "`fp8_tensor` (W8A8 as vLLM's fp8: float8_e4m3fn weights with one scale per tensor, "
        "activations with a dynamic per-tensor scale), `int4` (W4A16 as AWQ: 4-bit weights "
        "with a scale and zero point per group of 128 inputs, bf16 activations), all computed "
        "in fp32 on the rounded values so the mismatch does not depend on the CPU — and "
        "sampler truncation (`top_p` 0.9) while μ is reported from the raw distribution, as "
        "vLLM's raw logprobs are. (`fp8`, per-channel fp8 computed in bf16, is probed for "
        "comparison with the gentle suite.)",
        "- **Response length**: sorting a string of 8–100 digits (`sorting.py`): answers of "
        "9–101 tokens, mean 37, 2% of the RL prompts ≥ 96; binary exact-match reward.",
        "- **MoE routing**: `tiny-moe-deep` (Qwen3-MoE, 8 MoE layers, 16 experts, top-2, "
        "hidden 128, byte tokenizer); its routers are kept at their initialization during SFT "
        "(a stand-in for the load-balancing loss that keeps real routers undecided) and train "
        "during RL.",
        f"- **Staleness**: N ∈ {{1, 2, 4, 8}} and the learning rate. Every run: "
        f"{budget.grad_steps} gradient steps of B={budget.prompts_per_minibatch} × "
        f"G={budget.group_size}, held-out accuracy on {budget.eval_prompts} prompts × "
        f"{budget.eval_samples} samples at T=1 every {budget.eval_every} steps.",
        "",
    ]


def _rules(out_dir: Path) -> list[str]:
    lines = [
        "## Regime rules (declared in `research/stability/stress.py` before any pilot ran)",
        "",
    ]
    blocks = (stress.__doc__ or "").split("\n\n")[1:]
    rules = [
        b.strip()
        for b in blocks[: next(i for i, b in enumerate(blocks) if b.startswith("The matrix"))]
    ]
    lines += [line for block in rules for line in (block, "")]
    path = out_dir / "regime.json"
    if not path.is_file():
        return [*lines, "The pilots have not finished: no regime chosen yet.", ""]
    regime = stress.Regime.load(path)
    lines += [
        f"**Chosen**: rule A lr_on_policy = {regime.lr_on_policy:g}; rule B dial = "
        f"`{regime.dial}` (baseline collapsed: {regime.baseline_collapsed['B']}); rule C "
        f"lr_off_policy = {regime.lr_off_policy:g} (baseline collapsed: "
        f"{regime.baseline_collapsed['C']}).",
        "",
        "| rule | pilot cell | collapsed | reason | initial | peak | final |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule, evidence in regime.evidence.items():
        for e in evidence:
            if e.get("missing"):
                lines.append(f"| {rule} | `{e['cell']}` | missing | | | | |")
                continue
            lines.append(
                f"| {rule} | `{e['cell']}` | {e['collapsed']} | {e['reason']} | "
                f"{_f(e['initial_acc'])} | {_f(e['peak_acc'])} | {_f(e['final_acc'])} |"
            )
    return [*lines, ""]


def cold_start_table(out_dir: Path) -> list[str]:
    """The table of `coldstarts.json` (both suites' reports show it); [] when it is absent."""
    path = out_dir / "coldstarts.json"
    if not path.is_file():
        return []
    lines = ["| init | SFT steps | pass rate (T=1) |", "|---|---|---|"]
    lines += [
        f"| {c['name']} | {c['steps']} | {c['pass_rate']:.3f} |"
        for c in json.loads(path.read_text())
    ]
    return lines


def _cold_starts(out_dir: Path, runs: list[Run]) -> list[str]:
    table = cold_start_table(out_dir)
    if not table:
        return []
    lines = ["## Cold starts", "", *table, "", *_run_cpus(runs)]
    if (out_dir / "coldstart").is_dir():  # the committed ones, not a quick run's cache
        lines += [
            "The `balanced` cold start above made the pilots of rules A–C and every "
            "run in `stress/runs/` but F6's `cold/` cells (from the other two); all are "
            "committed (`stress/coldstart/`), so runs on any CPU start from them. "
            "SFT'd on an AVX2-only CPU the same recipe gives other weights "
            "(fp32 kernels round differently); the runs an AVX2 session made from its own "
            "cold start were superseded and left the tree (git history keeps them).",
            "",
        ]
    return lines


def _run_cpus(runs: list[Run]) -> list[str]:
    """Which kinds of CPU made the runs: from the same weights and seed, another instruction set
    rounds its way to another trajectory, so a cell's seeds may have run on either."""
    counts = Counter(run.meta.get("cpu", UNRECORDED_CPU) for run in runs)
    if len(counts) < 2:
        return []
    made = ", ".join(f"{n} on {cpu}" for cpu, n in sorted(counts.items()))
    return [
        f"Runs by the CPU they ran on: {made}. Every run starts from the committed cold "
        "start; a seed run on another kind of CPU follows another trajectory (its kernels "
        "round differently), and seeds from both are pooled as independent draws (the "
        "comparison rule is unpaired: Welch on per-seed finals).",
        "",
    ]


def _discrepancy(out_dir: Path) -> list[str]:
    path = out_dir / "discrepancy.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [
        "## What each dial does to the cold start (`probe.py`)",
        "",
        "Engine vs the fp32 trainer on the same sampled responses. `seq_log_ratio_*`: 5th/95th "
        "percentile of Σ_t log(π_old/μ) per response; `tis_cap_hit_frac`: tokens with "
        "π_old/μ outside [1/5, 5]; `sampling_kl`: mean −log of the mass the sampler keeps "
        "(invisible to any IS weight); `routing_layer_max`: the largest per-layer share of "
        "tokens whose top-2 set differs between engine and trainer.",
        "",
        "| init | dial | mean len | " + " | ".join(PROBE_KEYS) + " |",
        "|---|---|---|" + "---|" * len(PROBE_KEYS),
        *[
            f"| {r['init']} | `{r['dial']}` | {_f(r['response_len_mean'], 1)} | "
            + " | ".join(_f(r[k]) for k in PROBE_KEYS)
            + " |"
            for r in rows
        ],
        "",
    ]


def image_link(alt: str, path: Path, report_dir: Path) -> str:
    """A markdown image of `path` as REPORT.md in `report_dir` finds it (the stress section is
    part of the gentle suite's report one directory up, or a stress-only report beside it)."""
    return f"![{alt}]({Path(os.path.relpath(path, report_dir)).as_posix()})"


def _map(out_dir: Path, report_dir: Path, cells: list[dict], aliases: dict[str, str]) -> list[str]:
    """The stability map figure from every cell that has run (aliases resolved)."""
    by_cell = {c["cell"]: c for c in cells}
    rungs = [d.name for d in stress.MAP_RUNGS]
    grid, fell = {}, set()
    for rung in rungs:
        for n in stress.MAP_N:
            for name in stress.MAP_ALGORITHMS:
                cell = f"map/{rung}/N{n}/{name}"
                summary = by_cell.get(aliases.get(cell, cell))
                if summary is not None:
                    grid[(rung, n, name)] = (
                        summary["final_acc_mean"],
                        summary["collapsed"],
                        summary["seeds"],
                    )
                    final, start = summary["final_acc_mean"], summary["initial_acc_mean"]
                    if not summary["collapsed"] and final < COLLAPSE_FRACTION * start:
                        fell.add((rung, n, name))
    if not grid:
        return []
    path = out_dir / "figures" / "stability_map.png"
    stability_map_figure(grid, rungs, list(stress.MAP_N), list(stress.MAP_ALGORITHMS), path)
    table = [
        "| mismatch | N | " + " | ".join(f"`{a}`" for a in stress.MAP_ALGORITHMS) + " |",
        "|---|---|" + "---|" * len(stress.MAP_ALGORITHMS),
    ]
    for rung in rungs:
        for n in stress.MAP_N:
            entries = [
                _map_entry(grid.get((rung, n, a))) + (" ↓" if (rung, n, a) in fell else "")
                for a in stress.MAP_ALGORITHMS
            ]
            table.append(f"| `{rung}` | {n} | " + " | ".join(entries) + " |")
    total = len(rungs) * len(stress.MAP_N) * len(stress.MAP_ALGORITHMS)
    return [
        "## Stability map",
        "",
        f"{len(grid)} of {total} cells have run. Final held-out accuracy, mean over the "
        "cell's seeds (how many in brackets); a cell with a collapsed seed says how many. "
        "Replay by N as `replay_auto.prior_mode` has it (none at N = 1, R3 at N = 4 and 8); "
        "a map cell that is also a findings or F9 cell is that cell's runs. ↓: the final "
        f"accuracy is below {COLLAPSE_FRACTION:g} × the initial one and no seed collapsed by "
        "the criterion (a late evaluation climbs back over half the peak): a "
        "description added after the map's first runs showed such cells, not a verdict.",
        "",
        image_link("stability map", path, report_dir),
        "",
        *table,
        "",
    ]


def _map_entry(entry: tuple[float, int, int] | None) -> str:
    if entry is None:
        return "–"
    acc, collapsed, seeds = entry
    return f"**collapsed {collapsed}/{seeds}**, {_f(acc)}" if collapsed else f"{_f(acc)} ({seeds})"


def _findings(rows: list[dict], aliases: dict[str, str], findings: list) -> list[str]:
    lines = [
        "## Findings in the stress regime (the first rules, for the record)",
        "",
        "| finding | verdict |",
        "|---|---|",
    ]
    lines += [f"| {f.key}. {f.title} | {f.verdict} |" for f in findings] + [""]
    for f in findings:
        lines += [
            f"### {f.key}. {f.title} — **{f.verdict}**",
            "",
            f"*Claim:* {f.claim}",
            "",
            *[f"- {line}" for line in f.lines],
            "",
        ]
    return lines


def auto_verdict(rows: dict[str, list[dict]], auto: str, fixed: list[str]) -> tuple[str, str]:
    """(best fixed cell, verdict) of `auto` at one N by the rule declared in `stress`: 'missing'
    when a cell has fewer than MIN_SEEDS runs, else 'worse than X' when some fixed cell beats
    `auto` by `findings.better`, else 'better' or 'within noise' against the best fixed cell."""
    if any(len(rows.get(c, [])) < MIN_SEEDS for c in (auto, *fixed)):
        return "", "missing"
    means = {c: _finite_mean([r["final_acc"] for r in rows[c]]) for c in fixed}
    best = max(fixed, key=lambda c: (means[c] == means[c], means[c]))  # NaN means last
    beaten_by = [c for c in fixed if better(rows, auto, c) == -1]
    if beaten_by:
        return best, "worse than " + ", ".join(f"`{c}`" for c in beaten_by)
    return best, "better" if better(rows, auto, best) == 1 else "within noise"


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")


def _auto_modes(runs, cell: str) -> str:
    """Share of steps `auto` ran each mode, over the cell's seeds ('–' before any run)."""
    codes = [v for r in runs if r.cell == cell for v in r.column("replay_mode")[1]]
    if not codes:
        return "–"
    names = {0.0: "none", 2.0: "R2", 3.0: "R3"}
    return ", ".join(
        f"{names[c]} {codes.count(c) / len(codes):.0%}" for c in sorted(set(codes)) if c in names
    )


def auto_table(runs, run_rows: list[dict], aliases: dict[str, str]) -> list[str]:
    """`auto` against the fixed choices at each N of the stress suite (rule in `stress`)."""
    rows: dict[str, list[dict]] = {}
    for row in run_rows:
        rows.setdefault(row["cell"], []).append(row)
    for alias, owner in aliases.items():
        if owner in rows:
            rows[alias] = rows[owner]
    lines = [
        "## Routing Replay `auto` against the fixed choices",
        "",
        "MiniRL with clipping; final held-out accuracy, mean over seeds (collapsed/seeds). "
        "Rule declared in `research/stability/stress.py`; 'missing': a cell with fewer than "
        f"{MIN_SEEDS} runs.",
        "",
        "| N | auto (modes run) | none | R2 | R3 | best fixed | auto vs fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in stress.AUTO_N:
        auto = f"auto/N{n}/minirl+auto"
        fixed = [f"auto/N{n}/minirl+{c}" for c in stress.auto_choices(n)]
        best, verdict = auto_verdict(rows, auto, fixed)
        cell = {c.rsplit("+", 1)[1]: _acc(rows, c) for c in fixed}
        lines.append(
            f"| {n} | {_acc(rows, auto)} ({_auto_modes(runs, aliases.get(auto, auto))}) | "
            f"{cell['none']} | {cell.get('R2', 'no-op (= none)')} | {cell['R3']} | "
            f"{f'`{best}`' if best else '–'} | {verdict} |"
        )
    return [*lines, ""]


def _acc(rows: dict[str, list[dict]], cell: str) -> str:
    runs = rows.get(cell, [])
    if not runs:
        return "missing"
    mean = _finite_mean([r["final_acc"] for r in runs])
    return f"{_f(mean)} ({sum(r['collapsed'] for r in runs)}/{len(runs)})"


def _mechanisms(
    out_dir: Path, report_dir: Path, runs, rows: list[dict], cells: list[dict]
) -> list[str]:
    """Per cell the verdict next to the mechanism magnitudes, then the collapsing runs' curves."""
    lines = [
        "## Mechanisms per cell",
        "",
        "Means over each run's steps, then over seeds; routing: the most affected layer.",
        "",
        "| cell | collapsed | final acc | KL k3 | IS trunc | clip | route≠ infer/train "
        "(max layer) | route≠ old/current (max layer) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| `{c['cell']}` | {c['collapsed']}/{c['seeds']} | {_f(c['final_acc_mean'])} | "
            f"{_f(c['mean_kl_k3'])} | {_f(c['mean_is_trunc_frac'])} | {_f(c['mean_clip_frac'])} | "
            f"{_f(c['max_layer_routing_infer_vs_train'])} | "
            f"{_f(c['max_layer_routing_old_vs_current'])} |"
        )
    # `rows` are the runs' summaries in the same order: their verdicts are already judged.
    collapsed = [
        (run, row["collapse_step"] if row["collapse_step"] != "" else None)
        for run, row in zip(runs, rows, strict=True)
        if row["collapsed"]
    ]
    if collapsed:
        path = out_dir / "figures" / "collapses.png"
        collapse_figure(collapsed, path)
        lines += [
            "",
            f"{len(collapsed)} runs collapsed; the first eight, with the collapse step in red:",
            "",
            image_link("collapsing runs", path, report_dir),
        ]
    return [*lines, ""]


def _runs(out_dir: Path, report_dir: Path, runs: list[Run]) -> list[str]:
    if not runs:
        return ["## Matrix", "", "No matrix run has finished yet.", ""]
    rows = [run_summary(r) for r in runs]
    regime_path = out_dir / "regime.json"
    aliases = {}
    if regime_path.is_file():
        aliases = stress.matrix_cells(stress.Regime.load(regime_path))[1]
    cells = cell_summaries(rows)
    findings = evaluate_findings(rows, aliases=aliases, findings=(*FINDINGS, dppo_critique))
    lines = [
        *fidelity_section(
            [fidelity_stats.run_row(r) for r in runs], aliases, findings, out_dir, report_dir
        ),
        *_findings(rows, aliases, findings),
        *auto_table(runs, rows, aliases),
        *_map(out_dir, report_dir, cells, aliases),
        *_mechanisms(out_dir, report_dir, runs, rows, cells),
    ]
    lines += [
        "## Matrix runs",
        "",
        "| cell | seed | collapsed | reason | initial | peak | final |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['cell']}` | {r['seed']} | {r['collapsed']} | {r['reason']} | "
        f"{_f(r['initial_acc'])} | {_f(r['peak_acc'])} | {_f(r['final_acc'])} |"
        for r in rows
    ]
    return [*lines, ""]


def stress_section(out_dir: Path, report_dir: Path) -> list[str]:
    """Markdown lines of the stress suite's report from the files under `out_dir`, for a
    REPORT.md in `report_dir` (where its figure links start)."""
    runs = load_runs(out_dir)  # read once: the cold-start section counts them by CPU
    return [
        *_intro(),
        *_rules(out_dir),
        *_cold_starts(out_dir, runs),
        *_discrepancy(out_dir),
        *_runs(out_dir, report_dir, runs),
    ]
