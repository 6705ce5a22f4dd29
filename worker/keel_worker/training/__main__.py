"""Run a training job in-process from the command line, printing one JSON line per step.

    python -m keel_worker.training --workdir runs/add --config '{"steps": 30, "eval_every": 5}'
    python -m keel_worker.training --workdir runs/add --config config.json

`--config` is a `TrainingConfig` as JSON (inline or a file path); unset fields keep their
defaults (SmolLM2-135M-Instruct on the addition task with MiniRL). A second run with the same
`--workdir` resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keel.types.training import TrainingConfig
from keel_worker.training.run import DEFAULT_CACHE_DIR, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m keel_worker.training")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", default="{}", help="TrainingConfig JSON, inline or a file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    raw = Path(args.config).read_text() if Path(args.config).is_file() else args.config
    config = TrainingConfig.model_validate_json(raw)
    for result in train(
        config, workdir=args.workdir, resume=not args.no_resume, cache_dir=args.cache_dir
    ):
        line = {"step": result.step, "policy_version": result.policy_version, **result.metrics}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
