"""Figures in the style of the paper's Figs. 1–5: one 2×2 panel set per regime.

Panels: training reward, held-out accuracy, entropy, and the training–inference KL
KL(μ_old‖π_old) (k1) on a log scale, all against gradient steps. Each cell is one line, the mean
over its seeds, with a band from the lowest to the highest seed. Reward and KL are per-step
quantities and are smoothed with a trailing moving average; k1 can be negative on a batch (it is
an estimator), so values at or below `KL_FLOOR` are drawn at the floor.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from research.stability.results import Run

KL_FLOOR = 1e-6
SMOOTH = 5

PANELS = (
    ("train_reward", "Training reward", True, False),
    ("eval_acc", "Held-out accuracy (T=1)", False, False),
    ("entropy", "Entropy (nats/token)", False, False),
    ("kl_k1", "Training–inference KL (k1)", True, True),
)


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _style(cell: str) -> str:
    """R3 cells dashed and unclipped cells dotted, so ablations read at a glance."""
    if "noclip" in cell:
        return ":"
    return "--" if "+R3" in cell else "-"


def _seed_curves(runs: list[Run], column: str, smooth: bool) -> dict[int, list[float]]:
    """step -> the value of every seed that logged it."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        steps, values = run.column(column)
        if smooth:
            values = _smooth(values, SMOOTH)
        for step, value in zip(steps, values, strict=True):
            by_step.setdefault(step, []).append(value)
    return dict(sorted(by_step.items()))


def regime_figure(cells: dict[str, list[Run]], title: str, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for (column, label, smooth, log), ax in zip(PANELS, axes.flat, strict=True):
        for i, (cell, runs) in enumerate(cells.items()):
            curves = _seed_curves(runs, column, smooth)
            if not curves:
                continue
            steps = list(curves)
            floor = KL_FLOOR if log else float("-inf")
            mean = [max(sum(v) / len(v), floor) for v in curves.values()]
            low = [max(min(v), floor) for v in curves.values()]
            high = [max(max(v), floor) for v in curves.values()]
            color = f"C{i % 10}"
            ax.plot(
                steps,
                mean,
                color=color,
                lw=1.6,
                ls=_style(cell),
                label=f"{cell} ({len(runs)} seeds)",
            )
            ax.fill_between(steps, low, high, color=color, alpha=0.12, lw=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("gradient steps")
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stability_map_figure(
    grid: dict[tuple[str, int, str], tuple[float, int, int]],
    rungs: list[str],
    ns: list[int],
    algorithms: list[str],
    path: Path,
) -> None:
    """One panel per mismatch rung: algorithm × N, colored by final held-out accuracy, with the
    collapse count of the cell's seeds written in (✗ k/n); blank where the cell has no run.

    `grid[(rung, n, algorithm)] = (mean final acc, collapsed seeds, seeds)`.
    """
    fig, axes = plt.subplots(1, len(rungs), figsize=(3.2 * len(rungs) + 1.5, 3.6), sharey=True)
    image = None
    for ax, rung in zip(axes, rungs, strict=True):
        values = [[grid.get((rung, n, a), (float("nan"), 0, 0))[0] for n in ns] for a in algorithms]
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for i, a in enumerate(algorithms):
            for j, n in enumerate(ns):
                if (rung, n, a) not in grid:
                    continue
                acc, collapsed, seeds = grid[(rung, n, a)]
                mark = f"\n✗ {collapsed}/{seeds}" if collapsed else ""
                ax.text(
                    j,
                    i,
                    f"{acc:.2f}{mark}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if acc < 0.6 else "black",
                )
        ax.set_title(rung, fontsize=9)
        ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns], fontsize=8)
        ax.set_yticks(range(len(algorithms)), algorithms, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="final held-out acc (T=1)")
    fig.suptitle("Stability map: which recipe stays stable (✗ = collapsed seeds)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


COLLAPSE_PANELS = (
    ("eval_acc", "held-out acc", False),
    ("kl_k3", "KL k3 (μ‖π_old)", True),
    ("is_trunc_frac", "IS truncated frac", False),
    ("clip_frac", "clip frac", False),
    ("entropy", "entropy", False),
)


def collapse_figure(runs: list[tuple[Run, int | None]], path: Path, *, limit: int = 8) -> None:
    """The mechanism curves of collapsing runs, one row each, the collapse step marked: does
    the training–inference KL (or the IS truncation, the clip fraction) rise before it?"""
    runs = runs[:limit]
    fig, axes = plt.subplots(
        len(runs),
        len(COLLAPSE_PANELS),
        squeeze=False,
        figsize=(2.6 * len(COLLAPSE_PANELS), 1.9 * len(runs)),
    )
    for row, (run, step) in zip(axes, runs, strict=True):
        for ax, (column, label, log) in zip(row, COLLAPSE_PANELS, strict=True):
            steps, values = run.column(column)
            if log:
                values = [max(v, KL_FLOOR) for v in values]
            ax.plot(steps, values, lw=1.2)
            if step is not None:
                ax.axvline(step, color="red", lw=0.8, ls="--")
            if log:
                ax.set_yscale("log")
            ax.set_title(
                f"{run.cell} s{run.meta['seed']}: {label}" if column == "eval_acc" else label,
                fontsize=7,
            )
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
