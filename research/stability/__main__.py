"""Command line of the stability harness.

    python -m research.stability run --full                  # the gentle matrix, ≈ 1 h on 2 cores
    python -m research.stability run --quick                 # one seed, few steps: a few minutes
    python -m research.stability run --suite stress --full   # pilots → regime → findings → map
    python -m research.stability run --suite stress --full --part pilot   # only the regime rules
    python -m research.stability run --suite stress --quick  # smoke test of the stress dials
    python -m research.stability report                      # rebuild summaries, figures, REPORT.md
    python -m research.stability rerun --list                # the fidelity reruns (reruns.py)
    python -m research.stability rerun --part f1-rung1       # one part, < 2 h, resumable
    python -m research.stability ladder                      # the mismatch ladder's probe

Every run is kept as soon as it finishes and a rerun does only what is missing, so a long suite
runs in parts (`--deadline HH:MM` starts no run after that time). The cold-start cache lives
under `--cache-dir`, else `$KEEL_STABILITY_CACHE`, else `.cache/keel/stability` (never
committed). Results go to `research/results/stability` (gentle) and
`research/results/stability/stress`, quick ones to `<results>/tmp/quick` (ignored by git) unless
`--out` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from research.stability.coldstart import SFTBudget
from research.stability.matrix import Budget
from research.stability.suites import GENTLE, SUITES, Suite

DEFAULT_CACHE = Path(".cache/keel/stability")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.stability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="cold starts, probe, runs, then the report")
    mode = run.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="every cell, 3 seeds")
    mode.add_argument("--quick", action="store_true", help="every cell, 1 seed, 16 steps")
    run.add_argument("--suite", choices=sorted(SUITES), default=GENTLE.name)
    run.add_argument(
        "--part",
        choices=("pilot", "findings", "all"),
        default="all",
        help="stress suite: stop after the pilots or the findings cells",
    )
    run.add_argument("--out", type=Path, help="results directory")
    run.add_argument("--cache-dir", type=Path, help="cold-start cache")
    run.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    run.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")))
    run.add_argument("--grad-steps", type=int, help="gradient steps per run")
    run.add_argument("--eval-every", type=int, help="gradient steps between evaluations")
    run.add_argument("--eval-prompts", type=int, help="held-out prompts per evaluation")
    run.add_argument(
        "--cells",
        type=lambda s: tuple(s.split(",")),
        help="comma-separated substrings of cell names to keep "
        "(a trailing $ asks for that whole name)",
    )
    run.add_argument("--sft-max-steps", type=int, help="cap on SFT steps per cold start")
    run.add_argument("--deadline", help="HH:MM (local time): start no run after it")
    rerun = sub.add_parser("rerun", help="one part of the fidelity reruns (stability/reruns.py)")
    which = rerun.add_mutually_exclusive_group(required=True)
    which.add_argument("--list", action="store_true", help="the parts and their estimates")
    which.add_argument("--part", help="the part to run")
    rerun.add_argument("--cache-dir", type=Path, help="cold-start cache")
    rerun.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    rerun.add_argument("--deadline", help="HH:MM (local time): start no run after it")
    ladder = sub.add_parser("ladder", help="probe every rung candidate (stability/ladder.py)")
    ladder.add_argument("--prompts", type=int, default=64, help="RL-pool prompts per dial")
    ladder.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ladder.add_argument("--out", type=Path, help="results directory (default: the stress one)")
    ladder.add_argument("--cache-dir", type=Path, help="cold-start cache")
    ladder.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    report = sub.add_parser("report", help="rebuild summaries, figures and REPORT.md")
    report.add_argument(
        "--out",
        type=Path,
        default=GENTLE.results_dir,
        help="results directory of the gentle suite (the stress suite's is its stress/ subfolder)",
    )
    return parser


def _budgets(args: argparse.Namespace, suite: Suite) -> tuple[Budget, SFTBudget]:
    budget, sft = (suite.full, suite.sft) if args.full else (suite.quick, suite.quick_sft)
    overrides = {
        "seeds": args.seeds,
        "grad_steps": args.grad_steps,
        "eval_every": args.eval_every,
        "eval_prompts": args.eval_prompts,
        "cells": args.cells,
    }
    budget = replace(budget, **{k: v for k, v in overrides.items() if v is not None})
    if args.sft_max_steps is not None:
        sft = replace(
            sft, max_steps=args.sft_max_steps, check_every=min(sft.check_every, args.sft_max_steps)
        )
    return budget, sft


def _deadline(text: str | None) -> float | None:
    if text is None:
        return None
    hour, minute = (int(x) for x in text.split(":"))
    return datetime.now().replace(hour=hour, minute=minute, second=0).timestamp()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from research.stability.report import build_report

    if args.command == "report":
        print(build_report(args.out))
        return 0
    from research.stability import orchestrate

    if args.command == "rerun":
        return _rerun(args, orchestrate)
    if args.command == "ladder":
        return _ladder(args)
    suite = SUITES[args.suite]
    budget, sft = _budgets(args, suite)
    out = args.out or (suite.results_dir if args.full else suite.quick_dir)
    cache = args.cache_dir or Path(os.environ.get("KEEL_STABILITY_CACHE", DEFAULT_CACHE))
    common = {"out_dir": out, "cache_dir": cache, "workers": args.workers}
    if suite is GENTLE:
        orchestrate.run_gentle(suite, budget, sft, **common, deadline=_deadline(args.deadline))
        print(build_report(out))
    elif args.full:
        orchestrate.run_stress(
            suite, budget, sft, **common, part=args.part, deadline=_deadline(args.deadline)
        )
        # Beside the gentle suite's results (the default place): the one combined report.
        gentle = out.parent if (out.parent / "runs").is_dir() else None
        print(build_report(gentle, stress_dir=out))
    else:
        orchestrate.run_stress_quick(suite, budget, sft, **common)
        print(build_report(None, stress_dir=out))
    return 0


def _rerun(args: argparse.Namespace, orchestrate) -> int:
    from research.stability import reruns
    from research.stability.suites import STRESS

    probe = reruns.read_probe(STRESS.results_dir)
    if args.list:
        print("\n".join(reruns.plan_lines(probe)))
        return 0
    part = next((p for p in reruns.parts(probe) if p.name == args.part), None)
    if part is None:
        raise SystemExit(f"no part {args.part!r}; see rerun --list")
    cache = args.cache_dir or Path(os.environ.get("KEEL_STABILITY_CACHE", DEFAULT_CACHE))
    orchestrate.run_rerun(
        STRESS,
        part,
        STRESS.sft,
        out_dir=STRESS.results_dir / "reruns" / part.name,
        cache_dir=cache,
        workers=args.workers,
        deadline=_deadline(args.deadline),
    )
    return 0


def _ladder(args: argparse.Namespace) -> int:
    from research.stability import ladder
    from research.stability.suites import STRESS

    out = args.out or STRESS.results_dir
    ladder.run(
        STRESS,
        out_dir=out,
        cache_dir=args.cache_dir or Path(os.environ.get("KEEL_STABILITY_CACHE", DEFAULT_CACHE)),
        workers=args.workers,
        prompts=args.prompts,
        samples=args.samples,
    )
    print((out / "ladder.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
