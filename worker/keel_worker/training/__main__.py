"""Run a training job in-process from the command line, printing one JSON line per step.

    python -m keel_worker.training --workdir runs/add --config '{"steps": 30, "eval_every": 5}'
    python -m keel_worker.training --workdir runs/add --config config.json
    torchrun --nproc-per-node 2 -m keel_worker.training --workdir runs/add --config config.json

`--config` is a `TrainingConfig` as JSON (inline or a file path); unset fields keep their
defaults (SmolLM2-135M-Instruct on the addition task with MiniRL). A second run with the same
`--workdir` resumes from the latest checkpoint.

Under torchrun (`WORLD_SIZE` > 1) every rank joins the group (gloo on a CPU, NCCL on CUDA, bounded
by `--collective-timeout-s` and `--rollout-wait-timeout-s`: the service's jobs take the same bounds
from `KEEL_COLLECTIVE_TIMEOUT_S` and `KEEL_ROLLOUT_WAIT_TIMEOUT_S`; this in-process entry knows
nothing of the server) and runs the same data-parallel `train()`; rank 0 prints the lines and
writes the workdir (docs/how-to/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keel.types.training import TrainingConfig
from keel_worker.distributed import group
from keel_worker.training.run import DEFAULT_CACHE_DIR, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m keel_worker.training")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", default="{}", help="TrainingConfig JSON, inline or a file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--collective-timeout-s", type=float, default=600.0)
    parser.add_argument("--rollout-wait-timeout-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    # Inline JSON starts with "{" (and may be longer than a file name may be).
    raw = args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text()
    config = TrainingConfig.model_validate_json(raw)
    dp = None
    if group.launched_by_torchrun():
        dp = group.init_from_env(
            collective_timeout_s=args.collective_timeout_s,
            rollout_timeout_s=args.rollout_wait_timeout_s,
        )
    try:
        for result in train(
            config, workdir=args.workdir, resume=not args.no_resume, cache_dir=args.cache_dir
        ):
            if dp is None or dp.is_writer:
                line = {"step": result.step, "policy_version": result.policy_version}
                print(json.dumps({**line, **result.metrics}), flush=True)
    finally:
        if dp is not None:
            group.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
