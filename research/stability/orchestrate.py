"""Running the matrix: cold starts, the discrepancy probe, then every (cell, seed) in a pool.

Work is spread over `workers` spawned processes with one torch thread each (the target machine has
two cores). Runs are ordered seed-major (every cell at seed 0 first), so a matrix cut short by the
deadline still covers every cell. Completed runs are skipped, so an interrupted matrix resumes.
"""

from __future__ import annotations

import csv
import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from research.stability import coldstart, probe, runner, stress
from research.stability.matrix import DEFAULT_INIT, Budget, Cell, all_cells, select
from research.stability.results import UNRECORDED_CPU, load_runs, meta_paths
from research.stability.suites import SUITES


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    _die_with_parent()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the process that spawned it dies. Without it, a
    killed `run`/`rerun` leaves its workers finishing their runs (and the ones queued behind
    them) into the results folder, unseen. Elsewhere it does nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request
        os.kill(os.getpid(), signal.SIGTERM)


def _cold_start_job(suite_name: str, name: str, sft: coldstart.SFTBudget, cache_dir: Path):
    suite = SUITES[suite_name]
    mixture = next(m for m in suite.task.COLD_START_MIXTURES if m.name == name)
    cs = coldstart.ensure_cold_start(suite, mixture, sft, cache_dir=cache_dir, log=_log)
    return {
        "name": cs.name,
        "path": str(cs.path),
        "steps": cs.steps,
        "pass_rate": cs.pass_rate,
        "weights_sha256": cs.weights_sha256,
        "cpu": cs.cpu,
    }


def _probe_job(suite_name: str, name: str, path: str, dial, budget: Budget) -> dict:
    stats = probe.measure(
        SUITES[suite_name],
        Path(path),
        dial,
        prompts=budget.probe_prompts,
        n=budget.probe_samples,
        max_new_tokens=budget.max_new_tokens,
    )
    return {"init": name, **stats}


def _run_job(
    suite_name: str,
    cell: Cell,
    seed: int,
    budget: Budget,
    model_dir: str,
    out_dir: Path,
    cache_dir: Path,
    deadline: float | None,
) -> dict | None:
    if deadline is not None and time.time() > deadline:
        return None
    return runner.run_one(
        SUITES[suite_name],
        cell,
        seed,
        budget,
        model_dir=Path(model_dir),
        out_dir=out_dir,
        work_dir=cache_dir / "work",
        progress=_log,
    )


def _log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def run_gentle(
    suite,
    budget: Budget,
    sft: coldstart.SFTBudget,
    *,
    out_dir: Path,
    cache_dir: Path,
    workers: int,
    deadline: float | None = None,
) -> list[dict]:
    """The gentle suite: cold starts → discrepancy probe → every cell of its matrix."""
    cells = select(all_cells(), budget)
    with open_pool(workers) as pool:
        paths = prepare(
            pool,
            suite,
            sorted({c.init for c in cells}),
            sft,
            budget,
            out_dir=out_dir,
            cache_dir=cache_dir,
        )
        return run_cells(
            pool,
            suite,
            cells,
            budget,
            paths,
            out_dir=out_dir,
            cache_dir=cache_dir,
            deadline=deadline,
        )


def run_stress(
    suite,
    budget: Budget,
    sft: coldstart.SFTBudget,
    *,
    out_dir: Path,
    cache_dir: Path,
    workers: int,
    part: str,
    deadline: float | None = None,
) -> stress.Regime | None:
    """The stress suite, resumably: pilots and the regime rules (`stress`), then the findings
    cells and the `auto` comparison's own cells at `budget.seeds`, the F9 cells at
    `stress.F9_SEEDS` and the map's own cells at seed 0, each list filtered by `budget.cells`.
    `part` stops early: `pilot`, `findings` (pilots + findings + auto + F9) or `all`. Cold
    starts are made only for the cells that run. Returns the regime once chosen."""
    with open_pool(workers) as pool:
        paths = prepare(
            pool, suite, [DEFAULT_INIT], sft, budget, out_dir=out_dir, cache_dir=cache_dir
        )
        regime = _ensure_regime(pool, suite, budget, paths, out_dir, cache_dir, deadline)
        if regime is None or part == "pilot":
            return regime
        cells, _ = stress.matrix_cells(regime)
        own = {c.name: c for c in cells}
        groups = [
            (select([own[c.name] for c in stress.findings_cells(regime)], budget), budget),
            (
                select([own[c.name] for c in stress.auto_cells(regime) if c.name in own], budget),
                budget,
            ),
            (
                select([own[c.name] for c in stress.f9_cells(regime) if c.name in own], budget),
                replace(budget, seeds=stress.F9_SEEDS),
            ),
        ]
        if part == "all":
            map_only = {c.name for c in stress.map_cells(regime)}
            screening = select([c for c in cells if c.name in map_only], budget)
            groups.append((screening, replace(budget, seeds=(0,))))
        inits = sorted({c.init for group, _ in groups for c in group})
        paths = prepare(pool, suite, inits, sft, budget, out_dir=out_dir, cache_dir=cache_dir)
        run_groups(
            pool, suite, groups, paths, out_dir=out_dir, cache_dir=cache_dir, deadline=deadline
        )
    return regime


def run_rerun(
    suite,
    part,
    sft: coldstart.SFTBudget,
    *,
    out_dir: Path,
    cache_dir: Path,
    workers: int,
    deadline: float | None = None,
) -> None:
    """One part of `reruns` into `out_dir`, resumably; refuses to mix kinds of CPU."""
    from research.stability.reruns import foreign_cpus

    if not part.cells:
        raise SystemExit(f"{part.name}: cut ({part.cut})")
    foreign = foreign_cpus(out_dir, coldstart.cpu_kind())
    if foreign:
        raise SystemExit(f"{part.name}: {out_dir} holds runs of {sorted(foreign)}; not pooling")
    budget = part.budget()
    # The committed cold starts were probed with this very budget: reuse the probe, not redo it.
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("coldstarts.json", "discrepancy.csv"):
        if (suite.results_dir / name).is_file() and not (out_dir / name).exists():
            shutil.copyfile(suite.results_dir / name, out_dir / name)
    with open_pool(workers) as pool:
        inits = sorted({c.init for c in part.cells})
        paths = prepare(pool, suite, inits, sft, budget, out_dir=out_dir, cache_dir=cache_dir)
        run_groups(
            pool,
            suite,
            [(list(part.cells), budget)],
            paths,
            out_dir=out_dir,
            cache_dir=cache_dir,
            deadline=deadline,
        )


def _ensure_regime(pool, suite, budget, paths, out_dir, cache_dir, deadline):
    """Rules A, B, C of `stress` on their pilots (seed 0), each run once and kept in `pilot/`."""
    path = out_dir / "regime.json"
    if path.is_file():
        return stress.Regime.load(path)
    pilot_dir, one_seed = out_dir / "pilot", replace(budget, seeds=(0,), cells=())

    def runs_of(cells):
        run_cells(
            pool,
            suite,
            cells,
            one_seed,
            paths,
            out_dir=pilot_dir,
            cache_dir=cache_dir,
            deadline=deadline,
        )
        done = {r.cell: r for r in load_runs(pilot_dir)}
        return done if all(c.name in done for c in cells) else None

    if (runs := runs_of(stress.pilot_a_cells())) is None:
        return None
    lr_a, evidence_a = stress.rule_a(runs)
    _log(f"rule A: lr_on_policy = {lr_a:g}")
    if (runs := runs_of(stress.pilot_b_cells(lr_a))) is None:
        return None
    dial, collapsed_b, evidence_b = stress.rule_b(runs, lr_a)
    _log(f"rule B: dial = {dial.name} (baseline collapsed: {collapsed_b})")
    if (runs := runs_of(stress.pilot_c_cells(lr_a, dial))) is None:
        return None
    lr_c, collapsed_c, evidence_c = stress.rule_c(runs, lr_a, dial)
    _log(f"rule C: lr_off_policy = {lr_c:g} (baseline collapsed: {collapsed_c})")
    regime = stress.Regime(
        lr_on_policy=lr_a,
        dial=dial.name,
        lr_off_policy=lr_c,
        baseline_collapsed={"B": collapsed_b, "C": collapsed_c},
        evidence={"A": evidence_a, "B": evidence_b, "C": evidence_c},
    )
    regime.save(path)
    return regime


def run_stress_quick(
    suite,
    budget: Budget,
    sft: coldstart.SFTBudget,
    *,
    out_dir: Path,
    cache_dir: Path,
    workers: int,
) -> list[dict]:
    """A smoke run of the stress dials: a short cold start, the probe on every dial, and the two
    baselines of rules B and C on the int4 rung for a few steps (no regime is chosen)."""
    int4 = next(d for d in suite.dials if d.name == "int4")
    cells = [
        *stress.pilot_b_cells(stress.LR_GRID[0])[1:2],
        *stress.pilot_c_cells(stress.LR_GRID[-1], int4),
    ]
    with open_pool(workers) as pool:
        paths = prepare(
            pool, suite, [DEFAULT_INIT], sft, budget, out_dir=out_dir, cache_dir=cache_dir
        )
        return run_cells(pool, suite, cells, budget, paths, out_dir=out_dir, cache_dir=cache_dir)


def prepare(
    pool,
    suite,
    inits: list[str],
    sft: coldstart.SFTBudget,
    budget: Budget,
    *,
    out_dir: Path,
    cache_dir: Path,
) -> dict[str, str]:
    """Cold starts (cached) and the discrepancy probe of each init not probed yet; returns init
    name -> path. `coldstarts.json` and `discrepancy.csv` keep the inits of earlier calls."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _log(f"{suite.name}: cold starts {inits}")
    n = len(inits)
    colds = list(pool.map(_cold_start_job, [suite.name] * n, inits, [sft] * n, [cache_dir] * n))
    known_path = out_dir / "coldstarts.json"
    known = json.loads(known_path.read_text()) if known_path.is_file() else []
    _refuse_mixed_cold_starts(out_dir, known, colds)
    fresh = {c["name"]: c | {"sft": asdict(sft)} for c in colds}
    merged = [fresh.pop(c["name"], c) for c in known] + list(fresh.values())
    # The weights' path is this machine's cache: the record names them by their hash instead.
    records = [{k: v for k, v in c.items() if k != "path"} for c in merged]
    known_path.write_text(json.dumps(records, indent=2))
    probe_path = out_dir / "discrepancy.csv"
    rows = []
    if probe_path.is_file():
        with probe_path.open() as f:
            rows = list(csv.DictReader(f))
    probed = {r["init"] for r in rows}
    todo = [c for c in colds if c["name"] not in probed]
    if todo:
        _log(f"{suite.name}: discrepancy probe of {[c['name'] for c in todo]}")
        jobs = [(suite.name, c["name"], c["path"], d, budget) for c in todo for d in suite.dials]
        rows += list(pool.map(_probe_job, *zip(*jobs, strict=True)))
        _write_rows(probe_path, rows)
    return {c["name"]: c["path"] for c in colds}


def open_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def _refuse_mixed_cold_starts(out_dir: Path, known: list[dict], colds: list[dict]) -> None:
    """Stop before a run starts from other weights than the runs already in `out_dir`: the
    cold start is SFT'd per machine, and its weights follow the kind of CPU (fp32 kernels of
    different instruction sets round differently: the same code gave `d2d3697e…` on AVX-512 and
    `db35f5c1…` on AVX2) and could follow a code change in the forward or the sampler too."""
    recorded = {c["name"]: c for c in known}
    for cold in colds:
        before = recorded.get(cold["name"], {}).get("weights_sha256")
        if before is None or before == cold["weights_sha256"]:
            continue
        made = [
            p for p in meta_paths(out_dir) if json.loads(p.read_text()).get("init") == cold["name"]
        ]
        if made:
            made_on = recorded[cold["name"]].get("cpu", UNRECORDED_CPU)
            raise SystemExit(
                f"{len(made)} runs in {out_dir / 'runs'} start from cold start "
                f"{cold['name']!r} with weights {before[:12]}… (made on {made_on}), but this "
                f"machine's is {cold['weights_sha256'][:12]}… ({cold['steps']} SFT steps, on "
                f"{cold.get('cpu', 'this CPU')}): continue them on that kind of CPU, move them "
                "aside (they cannot be compared with new ones) or use another --out"
            )


def run_cells(
    pool,
    suite,
    cells: list[Cell],
    budget: Budget,
    paths: dict[str, str],
    *,
    out_dir: Path,
    cache_dir: Path,
    deadline: float | None = None,
) -> list[dict]:
    """Every (cell, seed) not done yet, seed-major; returns the metas of the runs done now."""
    return run_groups(
        pool,
        suite,
        [(cells, budget)],
        paths,
        out_dir=out_dir,
        cache_dir=cache_dir,
        deadline=deadline,
    )


def run_groups(
    pool,
    suite,
    groups: list[tuple[list[Cell], Budget]],
    paths: dict[str, str],
    *,
    out_dir: Path,
    cache_dir: Path,
    deadline: float | None = None,
) -> list[dict]:
    """`run_cells` of each (cells, budget) group, in group order, submitted together: a core
    that finishes a group's last run starts the next group's first instead of waiting."""
    todo = [
        (cell, seed, budget)
        for cells, budget in groups
        for seed in budget.seeds
        for cell in cells
        if not runner.is_done(out_dir, cell, seed)
    ]
    shape = " + ".join(f"{len(cells)} cells × {len(b.seeds)} seeds" for cells, b in groups if cells)
    _log(f"{len(todo)} runs to do ({shape})")
    futures = {
        pool.submit(
            _run_job,
            suite.name,
            cell,
            seed,
            budget,
            paths[cell.init],
            out_dir,
            cache_dir,
            deadline,
        ): (cell, seed)
        for cell, seed, budget in todo
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
