"""The two fidelity figures, read in ten seconds, from the stress suite's run rows.

1. `delta_vs_n.png`: Δ held-out accuracy (final − start) against N, one panel per recipe, one dot
   per seed, the cell mean joined by a line, and the evaluation-noise band of
   `fidelity_stats.noise_band` shaded around 0; a last panel gives the measured per-token k3 and
   clip fraction per N (MiniRL cells).
2. `map_delta.png`: the stability map as Δ (final − start), on a diverging scale centred on 0
   (no change from the start) whose limits are the largest |Δ| of the map (fitted to the data,
   not 0–1); rungs labelled with their measured k3, each cell with its seed count and collapses.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm

from research.stability import stress
from research.stability.fidelity_stats import Rows, noise_band

NS = (1, 2, 4, 8)
FIG_RUNG = "int4+top_p0.9"  # the regime's dial: the rung the findings cells ran at
RECIPES: dict[str, dict[int, str]] = {
    "MiniRL, no replay": {
        1: "N1/minirl",
        2: "auto/N2/minirl+none",
        4: "auto/N4/minirl+none",
        8: "auto/N8/minirl+none",
    },
    "MiniRL + R2": {2: "N2/minirl+R2", 4: "N4/minirl+R2", 8: "N8/minirl+R2"},
    "MiniRL + R3": {1: "N1/minirl+R3", 2: "N2/minirl+R3", 4: "N4/minirl+R3", 8: "N8/minirl+R3"},
    "MiniRL without clipping": {
        2: "N2/minirl-noclip",
        4: "N4/minirl-noclip",
        8: "N8/minirl-noclip",
    },
    "GRPO": {
        1: f"map/{FIG_RUNG}/N1/grpo",
        2: "N2/grpo+R2",
        4: "N4/grpo+R3",
        8: "N8/grpo+R3",
    },
    "CISPO": {
        1: f"map/{FIG_RUNG}/N1/cispo",
        2: "N2/cispo+R2",
        4: "N4/cispo+R3",
        8: "N8/cispo+R3",
    },
    "DPPO-TV": {
        1: f"map/{FIG_RUNG}/N1/dppo_tv",
        4: f"F9/{FIG_RUNG}/dppo_tv",
        8: f"map/{FIG_RUNG}/N8/dppo_tv",
    },
}
MINIRL_AT = {1: "N1/minirl", 2: "N2/minirl+R2", 4: "N4/minirl+R3", 8: "N8/minirl+R3"}


def _deltas(rows: Rows, cell: str) -> list[float]:
    return [
        r["final_acc"] - r["initial_acc"]
        for r in rows.get(cell, [])
        if math.isfinite(r["final_acc"]) and math.isfinite(r["initial_acc"])
    ]


def _band(rows: Rows) -> float:
    every = [r for runs in rows.values() for r in runs if r.get("eval_n")]
    if not every:
        return math.nan
    return noise_band(fmean(r["initial_acc"] for r in every), every[0]["eval_n"])


def _mean_of(rows: Rows, cell: str, key: str) -> float:
    values = [r[key] for r in rows.get(cell, []) if math.isfinite(r[key])]
    return fmean(values) if values else math.nan


def delta_vs_n_figure(rows: Rows, path: Path) -> None:
    band = _band(rows)
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.4), sharex=True)
    flat = list(axes.flat)
    positions = {n: i for i, n in enumerate(NS)}
    every = [d for cells in RECIPES.values() for c in cells.values() for d in _deltas(rows, c)]
    low = min([*every, -band]) - 0.03 if every else -1.0
    high = max([*every, band]) + 0.03 if every else 1.0
    for ax, (recipe, cells) in zip(flat, RECIPES.items(), strict=False):
        ax.axhspan(-band, band, color="0.85", zorder=0, label="evaluation noise (±2 SE)")
        ax.axhline(0, color="0.5", lw=0.8)
        xs, means = [], []
        for n, cell in cells.items():
            deltas = _deltas(rows, cell)
            if not deltas:
                continue
            x = positions[n]
            jitter = [x + 0.08 * (i - (len(deltas) - 1) / 2) for i in range(len(deltas))]
            collapsed = [r["collapsed"] for r in rows[cell]][: len(deltas)]
            colors = ["tab:red" if c else "tab:blue" for c in collapsed]
            ax.scatter(jitter, deltas, s=18, c=colors, zorder=3)
            xs.append(x)
            means.append(fmean(deltas))
        ax.plot(xs, means, color="black", lw=1.2, marker="_", markersize=14, zorder=2)
        ax.set_title(recipe, fontsize=9)
        ax.set_ylim(low, high)
        ax.grid(alpha=0.3)
    for ax in flat[:4]:
        ax.tick_params(labelbottom=True)
    mech = flat[-1]
    k3 = [_mean_of(rows, MINIRL_AT[n], "mean_kl_k3") for n in NS]
    # No clipping happens at N = 1 (π_old = π_θ): a 0 has no place on a log axis.
    clip = [_mean_of(rows, MINIRL_AT[n], "mean_clip_frac") for n in NS]
    clip = [c if c > 0 else math.nan for c in clip]
    mech.plot(range(len(NS)), k3, marker="o", color="tab:purple", label="per-token k3 KL(μ‖π_old)")
    mech.plot(range(len(NS)), clip, marker="s", color="tab:green", label="clip fraction")
    mech.set_yscale("log")
    mech.axhline(1e-2, color="tab:purple", ls=":", lw=1, label="k3 goal 1e-2")
    mech.set_title("measured per N (MiniRL cells)", fontsize=9)
    mech.legend(fontsize=7, loc="upper left")
    mech.grid(alpha=0.3)
    for ax in flat:
        ax.set_xticks(range(len(NS)), [f"N={n}" for n in NS], fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ held-out acc (final − start)", fontsize=8)
    fig.suptitle(
        f"Stress suite at {FIG_RUNG}: change of held-out accuracy per seed (red: collapsed), "
        f"cell mean (line), evaluation noise ±{band:.3f} (grey)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def map_delta_figure(rows: Rows, path: Path) -> dict[str, Any]:
    """The map on a diverging scale fitted to the data; returns what it drew (for the text)."""
    rungs = [d.name for d in stress.MAP_RUNGS]
    algorithms = list(stress.MAP_ALGORITHMS)
    cells = {
        (rung, n, a): f"map/{rung}/N{n}/{a}"
        for rung in rungs
        for n in stress.MAP_N
        for a in algorithms
    }
    values = {key: _deltas(rows, cell) for key, cell in cells.items()}
    finite = [fmean(v) for v in values.values() if v]
    limit = max(abs(x) for x in finite) if finite else 1.0
    k3 = {
        rung: fmean(
            [
                m
                for (r, _, _), cell in cells.items()
                if r == rung and math.isfinite(m := _mean_of(rows, cell, "mean_kl_k3"))
            ]
            or [math.nan]
        )
        for rung in rungs
    }
    fig, axes = plt.subplots(1, len(rungs), figsize=(3.4 * len(rungs) + 1.5, 3.8), sharey=True)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    image = None
    for ax, rung in zip(axes, rungs, strict=True):
        grid = [
            [
                fmean(values[(rung, n, a)]) if values[(rung, n, a)] else math.nan
                for n in stress.MAP_N
            ]
            for a in algorithms
        ]
        image = ax.imshow(grid, cmap="RdBu", norm=norm, aspect="auto")
        for i, a in enumerate(algorithms):
            for j, n in enumerate(stress.MAP_N):
                deltas = values[(rung, n, a)]
                if not deltas:
                    continue
                runs = rows[cells[(rung, n, a)]]
                collapsed = sum(r["collapsed"] for r in runs)
                mark = f"\n✗{collapsed}/{len(runs)}" if collapsed else f"\nn={len(runs)}"
                mean = fmean(deltas)
                ax.text(
                    j,
                    i,
                    f"{mean:+.2f}{mark}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(mean) > 0.6 * limit else "black",
                )
        measured = "≈ 0" if abs(k3[rung]) < 1e-6 else f"{k3[rung]:.1e}"
        ax.set_title(f"{rung}\nmeasured k3 {measured}", fontsize=9)
        ax.set_xticks(range(len(stress.MAP_N)), [f"N={n}" for n in stress.MAP_N], fontsize=8)
        ax.set_yticks(range(len(algorithms)), algorithms, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="Δ held-out acc (final − start)")
    fig.suptitle(
        "Stability map: change from the start (blue: gained, red: lost; scale fitted to the "
        "data), n = seeds, ✗ = collapsed seeds",
        fontsize=9,
        y=1.06,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"limit": limit, "k3": k3}
