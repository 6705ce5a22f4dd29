"""tinker-cookbook's recipes, unmodified, training SmolLM2-135M-Instruct on this CPU through keel.

Starts `keel up` on a free port, makes a project key and runs two of the cookbook's own training
loops from `.venv-tinker` (`make tinker-venv`) with the `tinker` SDK pointed at keel by its
environment variables alone (TINKER_BASE_URL, TINKER_API_KEY = "tml-" + the key):

1. `math_rl` with the arithmetic environment (`recipes/math_rl/train.py`'s `cli_main`): RL with
   the recipe's default loss (importance_sampling), its rewards (1 for the right sum, −0.1 for an
   answer that does not stop within `max_tokens`) and its sampling through keel;
2. the cookbook's supervised trainer (`supervised/train.py`, cross_entropy) on the first eight of
   the example conversations the cookbook ships, seen once per epoch.

The criteria, declared here before any run (the constants block below), and why:

- math_rl: the mean reward of the last `RL_WINDOW` steps exceeds that of the first `RL_WINDOW`
  steps by at least `RL_MIN_GAIN`. The pilot (`bench/results/tinker_cookbook_pilot.json`, made by
  `examples/tinker_client.py pilot`) sampled the frozen base model on the recipe's own problems
  with these batch sizes (16 problems × 4 samples, 12 steps): its step means scatter with
  σ = 0.019 around −0.054 (it almost never sums right; about half its answers do not stop within
  5 tokens, −0.1 each, so stopping alone can lift the mean by about 0.05). Under no learning,
  the difference of two k-step means has standard deviation σ·√(2/k); the margin is three of
  those, so a rise this large is learning, not sampling noise: 3 · σ · √(2/k)
  (`margin_from_pilot`; a test holds the constant to the pilot file).
- supervised: the last epoch's mean `train_mean_nll` is at least `SL_MIN_DROP` (10 %) below the
  first epoch's. The data is identical every epoch, so the NLL has no sampling noise; 10 % asks
  for a fall that memorizing eight short conversations over five epochs clearly makes.

    python examples/tinker_recipes.py          # writes bench/results/tinker_cookbook.json

It exits 1 when a criterion is not met or a recipe fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from demo_service import KeelService, choose_port  # noqa: E402

import keel  # noqa: E402

# ---------------------------------------------------------------- declared before any run
MODEL = "smollm2-135m-instruct"
LORA_RANK = 16
RL_STEPS = 16
RL_GROUPS_PER_BATCH = 16
RL_GROUP_SIZE = 4
RL_MAX_TOKENS = 5
RL_LR = 4e-4
RL_WINDOW = 5  # k: the first k steps against the last k
RL_PILOT_STDEV = 0.0190  # σ of the pilot's step means (bench/results/tinker_cookbook_pilot.json)
RL_MIN_GAIN = 0.037  # = 3 · RL_PILOT_STDEV · √(2 / RL_WINDOW) = 0.0360, rounded up
SL_CONVERSATIONS = 8
SL_BATCH_SIZE = 4
SL_EPOCHS = 5
SL_LR = 5e-4
SL_MIN_DROP = 0.10  # the last epoch's mean NLL ≤ (1 − 0.10) × the first epoch's
# ----------------------------------------------------------------------------------------

TINKER_PYTHON = REPO / ".venv-tinker" / "bin" / "python"
CLIENT = REPO / "examples" / "tinker_client.py"
RESULTS = REPO / "bench" / "results" / "tinker_cookbook.json"
PILOT = REPO / "bench" / "results" / "tinker_cookbook_pilot.json"
PROJECT = "tinker-cookbook"


def margin_from_pilot(stdev_of_step_means: float, window: int) -> float:
    """Three standard deviations of (mean of last k steps − mean of first k) under no learning."""
    return 3.0 * stdev_of_step_means * math.sqrt(2.0 / window)


def tinker_environment(base_url: str, keel_key: str) -> dict[str, str]:
    """What a Tinker program needs to talk to keel: the two SDK variables, and offline mode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "TINKER_"))}
    env.update(
        TINKER_BASE_URL=f"{base_url}/tinker",
        TINKER_API_KEY=f"tml-{keel_key}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_WAIT_POLICY="PASSIVE",
    )
    return env


def tokenizer_dir(home: Path) -> Path:
    """keel's converted SmolLM2 directory (the one its worker loads), converted here if new."""
    from keel_worker.engines import smollm2

    return smollm2.ensure_converted(smollm2.smollm2_gguf_path(), home / "models")


def run_client(command: list[str], env: dict[str, str], log: Path) -> float:
    """One recipe in `.venv-tinker`; returns its wall time. Its output goes to `log`."""
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            [str(TINKER_PYTHON), str(CLIENT), *command],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{command[0]} exited {done.returncode}:\n{tail}")
    return time.monotonic() - started


def read_metrics(log_dir: Path) -> list[dict[str, Any]]:
    lines = (log_dir / "metrics.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines if line.strip()), key=lambda m: m["step"])


def judge_math_rl(metrics: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    metrics = [m for m in metrics if "env/all/reward/total" in m]  # training records only
    rewards = [m["env/all/reward/total"] for m in metrics]
    first, last = _mean(rewards[:RL_WINDOW]), _mean(rewards[-RL_WINDOW:])
    return {
        "reward_by_step": [round(r, 4) for r in rewards],
        "correct_by_step": [round(m.get("env/all/correct", float("nan")), 4) for m in metrics],
        "format_by_step": [round(m.get("env/all/format", float("nan")), 4) for m in metrics],
        "first_window": first,
        "last_window": last,
        "gain": last - first,
        "min_gain": RL_MIN_GAIN,
        "met": len(rewards) == RL_STEPS and last - first >= RL_MIN_GAIN,
        "last_step_metrics": metrics[-1] if metrics else {},
        "wall_s": round(wall_s, 1),
    }


def judge_sl(metrics: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    per_epoch = math.ceil(SL_CONVERSATIONS / SL_BATCH_SIZE)
    metrics = [m for m in metrics if "train_mean_nll" in m]  # training records only
    nll = [m["train_mean_nll"] for m in metrics]
    epochs = [_mean(nll[i : i + per_epoch]) for i in range(0, len(nll), per_epoch)]
    first, last = epochs[0], epochs[-1]
    return {
        "nll_by_step": [round(x, 4) for x in nll],
        "nll_by_epoch": [round(x, 4) for x in epochs],
        "drop": 1.0 - last / first,
        "min_drop": SL_MIN_DROP,
        "met": len(epochs) == SL_EPOCHS and last <= (1.0 - SL_MIN_DROP) * first,
        "last_step_metrics": metrics[-1] if metrics else {},
        "wall_s": round(wall_s, 1),
    }


def run_recipes(url: str, keel_key: str, home: Path) -> dict[str, Any]:
    env = tinker_environment(url, keel_key)
    common = ["--tokenizer-dir", str(tokenizer_dir(home)), "--lora-rank", str(LORA_RANK)]
    rl_dir, sl_dir = home / "math_rl", home / "sl"
    rl_options = {
        "--steps": RL_STEPS,
        "--groups-per-batch": RL_GROUPS_PER_BATCH,
        "--group-size": RL_GROUP_SIZE,
        "--max-tokens": RL_MAX_TOKENS,
        "--lr": RL_LR,
    }
    rl_wall = run_client(
        ["math-rl", *common, "--log-dir", str(rl_dir), *_flat(rl_options)],
        env,
        home / "math_rl.log",
    )
    math_rl = judge_math_rl(read_metrics(rl_dir), rl_wall)
    print(f"math_rl: reward {math_rl['first_window']:+.3f} -> {math_rl['last_window']:+.3f}")
    sl_options = {
        "--lr": SL_LR,
        "--conversations": SL_CONVERSATIONS,
        "--batch-size": SL_BATCH_SIZE,
        "--epochs": SL_EPOCHS,
    }
    sl_wall = run_client(
        ["sl", *common, "--log-dir", str(sl_dir), *_flat(sl_options)], env, home / "sl.log"
    )
    sl = judge_sl(read_metrics(sl_dir), sl_wall)
    print(f"sl: NLL by epoch {sl['nll_by_epoch']}")
    return {"math_rl": math_rl, "sl": sl}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, default=REPO / ".keel-tinker", help="`keel up`'s home")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not TINKER_PYTHON.exists():
        raise SystemExit("no .venv-tinker: run `make tinker-venv` first")
    started, load_before = time.monotonic(), os.getloadavg()
    service = KeelService(args.home, choose_port(8000))
    admin_key = service.start()
    try:
        with keel.Client(base_url=service.url, api_key=admin_key) as client:
            keel_key = client.keys.create(project=PROJECT, name="tinker-cookbook").key
        summary = run_recipes(service.url, keel_key, args.home)
    finally:
        service.stop()
    summary.update(_record(started, load_before))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    met = summary["math_rl"]["met"] and summary["sl"]["met"]
    print(f"criteria {'met' if met else 'NOT met'}; {summary['total_wall_s'] / 60:.1f} min")
    return 0 if met else 1


def _record(started: float, load_before: tuple[float, ...]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from bench.machine import describe_machine, load_averages

    return {
        "model": MODEL,
        "declared": {
            "rl": {"steps": RL_STEPS, "window": RL_WINDOW, "min_gain": RL_MIN_GAIN},
            "pilot": PILOT.relative_to(REPO).as_posix(),
            "sl": {"epochs": SL_EPOCHS, "min_drop": SL_MIN_DROP},
        },
        "machine": describe_machine(
            load_before=[round(x, 2) for x in load_before], load_after=load_averages()
        ),
        "total_wall_s": round(time.monotonic() - started, 1),
    }


def _flat(options: dict[str, Any]) -> list[str]:
    return [str(part) for pair in options.items() for part in pair]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    sys.exit(main())
