"""Running the matrix: cold starts, the discrepancy probe, then every (cell, seed) in a pool.

Work is spread over `workers` spawned processes with one torch thread each (the target machine has
two cores). Runs are ordered seed-major (every cell at seed 0 first), so a matrix cut short by the
deadline still covers every cell. Completed runs are skipped, so an interrupted matrix resumes.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from bench.stability import coldstart, probe, runner, task
from bench.stability.matrix import Budget, Cell, cells_for


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _cold_start_job(name: str, sft: coldstart.SFTBudget, cache_dir: Path) -> dict:
    mixture = next(m for m in task.COLD_START_MIXTURES if m.name == name)
    cs = coldstart.ensure_cold_start(mixture, sft, cache_dir=cache_dir)
    return {"name": cs.name, "path": str(cs.path), "steps": cs.steps, "pass_rate": cs.pass_rate}


def _probe_job(name: str, path: str, precision: str) -> dict:
    return {"init": name, **probe.measure(Path(path), precision)}


def _run_job(
    cell: Cell, seed: int, budget: Budget, model_dir: str, out_dir: Path, cache_dir: Path,
    deadline: float | None,
) -> dict | None:
    if deadline is not None and time.time() > deadline:
        return None
    return runner.run_one(
        cell, seed, budget, model_dir=Path(model_dir), out_dir=out_dir,
        work_dir=cache_dir / "work",
    )


def _log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def run_matrix(
    budget: Budget,
    sft: coldstart.SFTBudget,
    *,
    out_dir: Path,
    cache_dir: Path,
    workers: int,
    deadline: float | None = None,
) -> list[dict]:
    """Cold starts → discrepancy probe → all runs; returns the metas of the runs done now."""
    cells = cells_for(budget)
    inits = sorted({c.init for c in cells})
    out_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        _log(f"cold starts: {inits}")
        colds = list(pool.map(_cold_start_job, inits, [sft] * len(inits), [cache_dir] * len(inits)))
        (out_dir / "coldstarts.json").write_text(
            json.dumps([c | {"sft": asdict(sft)} for c in colds], indent=2)
        )
        paths = {c["name"]: c["path"] for c in colds}
        _log("discrepancy probe")
        jobs = [(c["name"], c["path"], p) for c in colds for p in probe.PRECISIONS]
        probes = list(pool.map(_probe_job, *zip(*jobs, strict=True)))
        _write_rows(out_dir / "discrepancy.csv", probes)
        todo = [
            (cell, seed)
            for seed in budget.seeds
            for cell in cells
            if not runner.is_done(out_dir, cell, seed)
        ]
        _log(f"{len(todo)} runs to do ({len(cells)} cells × {len(budget.seeds)} seeds)")
        futures = {
            pool.submit(
                _run_job, cell, seed, budget, paths[cell.init], out_dir, cache_dir, deadline
            ): (cell, seed)
            for cell, seed in todo
        }
        done = []
        for i, future in enumerate(as_completed(futures), 1):
            cell, seed = futures[future]
            try:
                meta = future.result()
            except Exception as exc:  # one broken run must not take the matrix down with it
                _log(f"[{i}/{len(todo)}] {cell.name} seed {seed}: FAILED {exc!r}")
                continue
            if meta is None:
                _log(f"[{i}/{len(todo)}] {cell.name} seed {seed}: skipped (deadline)")
                continue
            done.append(meta)
            status = meta["error"] or "ok"
            _log(f"[{i}/{len(todo)}] {cell.name} seed {seed}: {meta['wall_s']:.0f} s, {status}")
    return done


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
