"""Saved runs → per-run verdicts and per-cell summaries (the CSV summaries of the report).

Reads `runs/*/seed*.json` (complete runs only) and their CSVs, applies the collapse criterion of
`criterion` to each run, and aggregates the seeds of each cell.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from research.stability.criterion import RunSeries, Verdict, judge

# What a record older than its "cpu" field says of the CPU that made it.
UNRECORDED_CPU = "a CPU it did not record"


@dataclass(frozen=True)
class Run:
    """One completed run: its description and its rows (floats, NaN where not logged)."""

    meta: dict[str, Any]
    rows: list[dict[str, float | None]]  # None where the run did not log that column

    @property
    def cell(self) -> str:
        return self.meta["cell"]

    def column(self, name: str) -> tuple[list[int], list[float]]:
        """(grad steps, values) of the rows where `name` was logged (NaN and inf included)."""
        pairs = [(int(r["grad_step"]), r.get(name)) for r in self.rows]
        pairs = [(s, v) for s, v in pairs if v is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def series(self) -> RunSeries:
        eval_steps, eval_acc = self.column("eval_acc")
        _, entropy = self.column("entropy")
        loss_steps, loss = self.column("loss")
        norm_steps, norm = self.column("grad_norm")
        return RunSeries(eval_steps, eval_acc, entropy, loss + norm, loss_steps + norm_steps)

    def verdict(self) -> Verdict:
        return judge(self.series())


def _float(text: str | None) -> float | None:
    return float(text) if text not in ("", None) else None


def meta_paths(out_dir: Path) -> list[Path]:
    """The JSON meta of every finished run in `out_dir` (its CSV lies beside it)."""
    return sorted((out_dir / "runs").glob("*/seed*.json"))


def load_runs(out_dir: Path) -> list[Run]:
    runs = []
    for meta_path in meta_paths(out_dir):
        meta = json.loads(meta_path.read_text())
        with meta_path.with_suffix(".csv").open() as f:
            rows = [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        runs.append(Run(meta, rows))
    return runs


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return fmean(finite) if finite else math.nan


def _sd(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return stdev(finite) if len(finite) > 1 else math.nan


def _max_layer_mean(run: Run, prefix: str) -> float:
    """The largest over MoE layers of the run's mean per-layer routing disagreement (NaN for a
    run that logged no per-layer columns, e.g. the gentle suite's)."""
    layers = sorted({k for row in run.rows for k in row if k.startswith(f"{prefix}_L")})
    means = [_mean(run.column(k)[1]) for k in layers]
    finite = [m for m in means if math.isfinite(m)]
    return max(finite) if finite else math.nan


def run_summary(run: Run) -> dict[str, Any]:
    """One row of `summary_runs.csv`."""
    v = run.verdict()
    whole = {name: _mean(run.column(name)[1]) for name in RUN_MEANS}
    _, entropy = run.column("entropy")
    _, kl = run.column("kl_k1")
    tenth = max(1, len(kl) // 10)
    return {
        "cell": run.cell,
        "regime": run.meta["regime"],
        "seed": run.meta["seed"],
        "collapsed": int(v.collapsed),
        "reason": v.reason,
        "collapse_step": "" if v.step is None else v.step,
        "initial_acc": v.initial_acc,
        "peak_acc": v.peak_acc,
        "final_acc": v.final_acc,
        "final_greedy_acc": _mean(run.column("eval_greedy_acc")[1][-3:]),
        "final_train_reward": _mean(run.column("train_reward")[1][-5:]),
        "entropy_start": _mean(entropy[:3]),
        "entropy_end": _mean(entropy[-3:]),
        "kl_start": _mean(kl[:tenth]),  # first and last tenth of the logged steps
        "kl_end": _mean(kl[-tenth:]),
        **{f"mean_{k}": val for k, val in whole.items()},
        **{f"max_layer_{p}": _max_layer_mean(run, p) for p in ROUTING_PREFIXES},
        "wall_s": run.meta.get("wall_s", math.nan),
        "error": run.meta.get("error") or "",
    }


# Quantities averaged over the whole run for the summaries.
RUN_MEANS = (
    "kl_k1",
    "kl_k3",
    "prob_diff_mean",
    "clip_frac",
    "is_trunc_frac",
    "routing_infer_vs_train",
    "routing_old_vs_current",
    "grad_norm",
)


ROUTING_PREFIXES = ("routing_infer_vs_train", "routing_old_vs_current")


def cell_summaries(run_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate `run_summary` rows by cell (mean and sd over seeds, collapse count)."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for row in run_rows:
        cells.setdefault(row["cell"], []).append(row)
    out = []
    for cell, rows in cells.items():
        summary: dict[str, Any] = {
            "cell": cell,
            "regime": rows[0]["regime"],
            "seeds": len(rows),
            "collapsed": sum(r["collapsed"] for r in rows),
        }
        for key in (
            "initial_acc",
            "peak_acc",
            "final_acc",
            "final_greedy_acc",
            "final_train_reward",
            "entropy_start",
            "entropy_end",
        ):
            summary[f"{key}_mean"] = _mean([r[key] for r in rows])
            summary[f"{key}_sd"] = _sd([r[key] for r in rows])
        for key in RUN_MEANS:
            summary[f"mean_{key}"] = _mean([r[f"mean_{key}"] for r in rows])
        for prefix in ROUTING_PREFIXES:
            summary[f"max_layer_{prefix}"] = _mean([r[f"max_layer_{prefix}"] for r in rows])
        out.append(summary)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
