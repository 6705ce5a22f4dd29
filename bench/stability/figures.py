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

from bench.stability.results import Run

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
            ax.plot(steps, mean, color=color, lw=1.6, ls=_style(cell),
                    label=f"{cell} ({len(runs)} seeds)")
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
