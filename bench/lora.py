"""LoRA against full fine-tuning on SmolLM2-135M-Instruct.

Two measurements, each run in its own subprocess so that its peak RSS is its own:

- `step`: the work of `bench/step_time.py` (addition, 8 prompts × 8 samples, ≤ 64 new tokens,
  T = 1, fp32 rollouts and training, one optimizer step per batch): median step time after
  warm-up, its generation / training split and peak RSS, full fine-tuning vs LoRA (keel's
  defaults: rank 16, alpha 32, all-linear);
- `reward`: 16 demo-sized steps (`scripts/demo.py`'s job: 8 prompts × 8 samples in 2
  mini-batches, ≤ 24 new tokens, bf16 rollouts (`--precision`), fp32 training, held-out
  fraction 0.3) through the in-process `train()`: reward per step and greedy held-out accuracy
  on 30 sums before and after; full fine-tuning at the demo's lr 1e-5, LoRA at 1e-4 (adapters
  want about 10× the lr).

Results go to `bench/results/lora.{json,md}` with the CPU model and the `uptime` load average
around each run (the machine is shared). Each finished run is written at once, so an
interrupted benchmark keeps what it measured.

    .venv/bin/python bench/lora.py step            # 1 warm-up + 3 measured steps each
    .venv/bin/python bench/lora.py reward          # 16 steps each
    .venv/bin/python bench/lora.py all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import step_time  # the sibling benchmark (this script's folder is on sys.path) owns the step work

from keel.types import metric_names as metric

RESULTS = step_time.RESULTS
RESULT_FILE = RESULTS / "lora.json"
LORA_LR = 1e-4
DEMO_STEPS = 16
VARIANTS = ("full", "lora")


def demo_config(variant: str, cache_dir: Path, steps: int, precision: str = "bf16"):
    from keel.types.training import TrainingConfig

    lora = {"lora": {}, "optimizer": {"lr": LORA_LR}} if variant == "lora" else {}
    return TrainingConfig.model_validate(
        {
            "model": {"name": str(step_time._model_dir(cache_dir))},
            "task": {"name": "addition", "held_out_fraction": 0.3},
            "rollout": {"engine": "hf", "precision": precision, "max_new_tokens": 24},
            "train_dtype": "fp32",
            "optimizer": {"lr": step_time.LR},
            "prompts_per_step": 8,
            "group_size": 8,
            "num_minibatches": 2,
            "steps": steps,
            "seed": 0,
            "eval_every": steps,
            "eval_size": 30,
            "checkpoint_every": 0,
            **lora,
        }
    )


def run_reward(variant: str, steps: int, cache_dir: Path, precision: str) -> dict:
    from keel_worker.training.run import train

    out: dict = {"reward_mean": [], "step_s": [], "kl_k3": []}
    with tempfile.TemporaryDirectory() as workdir:
        config = demo_config(variant, cache_dir, steps, precision)
        for result in train(config, workdir=Path(workdir), resume=False, cache_dir=cache_dir):
            m = result.metrics
            out["reward_mean"].append(m[metric.REWARD_MEAN])
            out["step_s"].append(m[metric.TIME_STEP])
            out["kl_k3"].append(m[metric.MISMATCH_KL_K3])
            if metric.EVAL_ACCURACY in m:
                out["eval_accuracy_before"] = m[metric.EVAL_ACCURACY]
            if metric.EVAL_ACCURACY_FINAL in m:
                out["eval_accuracy_after"] = m[metric.EVAL_ACCURACY_FINAL]
            print("STEP " + json.dumps(out), flush=True)  # the parent keeps partial runs
    return out


def child(kind: str, variant: str, steps: int, cache_dir: Path, precision: str = "bf16") -> None:
    import torch

    torch.manual_seed(step_time.SEED)
    if kind == "step":
        lora = {"lora": {}} if variant == "lora" else {}
        result = step_time.run_keel(steps, cache_dir, **lora)
    else:
        result = run_reward(variant, steps, cache_dir, precision)
    result["peak_rss_bytes"] = step_time._peak_rss_bytes()
    result["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


def spawn(
    kind: str,
    variant: str,
    steps: int,
    cache_dir: Path,
    precision: str = "bf16",
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Run one child; `on_step` gets each `STEP` line's partial result as it arrives."""
    cmd = [
        sys.executable,
        __file__,
        kind,
        "--child",
        variant,
        "--steps",
        str(steps),
        "--cache-dir",
        str(cache_dir),
        "--precision",
        precision,
    ]
    load_before = _uptime()
    result = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("STEP ") and on_step is not None:
                partial = json.loads(line[len("STEP ") :])
                on_step({**partial, "uptime_before": load_before, "uptime_after": _uptime()})
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
    if proc.returncode or result is None:
        raise RuntimeError(f"{kind}/{variant} run failed (exit {proc.returncode})")
    result["uptime_before"], result["uptime_after"] = load_before, _uptime()
    return result


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _save(name: str, part: dict) -> None:
    """Merge one part (`step` or `reward`) into the results file, keeping the other part."""
    results = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.is_file() else {}
    results["machine"] = f"{_cpu_model()}, {os.cpu_count()} cores ({platform.machine()})"
    results[name] = part
    RESULTS.mkdir(parents=True, exist_ok=True)
    RESULT_FILE.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "lora.md").write_text(report(results))


def measure_steps(steps: int, warmup: int, cache_dir: Path, variants: list[str]) -> None:
    """Runs `variants`; the other variant's numbers already in the results file are kept."""
    results = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.is_file() else {}
    part = {v: results["step"][v] for v in VARIANTS if v in results.get("step", {})}
    part["work"] = (
        f"step_time.py's work: SmolLM2-135M-Instruct, addition, {step_time.B} prompts × "
        f"{step_time.G} samples, ≤{step_time.MAX_NEW_TOKENS} new tokens, T=1, fp32 rollouts and "
        "training, 1 optimizer step per batch; LoRA rank 16, alpha 32, all-linear"
    )
    for variant in variants:
        raw = spawn("step", variant, steps + warmup, cache_dir)
        part[variant] = {
            **step_time.summarize(raw, warmup),
            "warmup_steps": warmup,
            "uptime_before": raw["uptime_before"],
            "uptime_after": raw["uptime_after"],
        }
        print(variant, json.dumps(part[variant]), flush=True)
        _save("step", part)


def measure_reward(steps: int, cache_dir: Path, precision: str, variants: list[str]) -> None:
    part: dict = {}
    part["work"] = (
        f"{steps} demo-sized steps: SmolLM2-135M-Instruct, addition (30 % held out), 8 prompts × "
        f"8 samples in 2 mini-batches, ≤24 new tokens, {precision} rollouts, fp32 training, "
        "seed 0; "
        f"full fine-tuning lr {step_time.LR:g}, LoRA (rank 16, alpha 32, all-linear) lr {LORA_LR:g}"
    )

    def keep(variant: str, raw: dict) -> None:
        part[variant] = raw
        _save("reward", part)

    for variant in variants:
        raw = spawn(
            "reward",
            variant,
            steps,
            cache_dir,
            precision,
            on_step=lambda partial, v=variant: keep(v, {**partial, "partial": True}),
        )
        raw["peak_rss_gb"] = raw.pop("peak_rss_bytes") / 1e9
        keep(variant, raw)


def report(results: dict) -> str:
    lines = [
        "# LoRA vs full fine-tuning (SmolLM2-135M-Instruct)",
        "",
        f"Machine: {results['machine']}.",
        "",
    ]
    if "step" in results:
        step = results["step"]
        lines += [
            f"## Step time\n\n{step['work']}. Median over the measured steps after "
            "the warm-up step(s); each variant in its own process.",
            "",
            "| | full | LoRA |",
            "|---|---:|---:|",
        ]
        rows = [
            ("median step (s)", "median_step_s"),
            ("  generation (s)", "median_generate_s"),
            ("  training (s)", "median_train_s"),
            ("peak RSS (GB)", "peak_rss_gb"),
        ]
        for name, key in rows:
            cells = [f"{step[v][key]:.2f}" if v in step else "—" for v in VARIANTS]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        for v in VARIANTS:
            if v in step:
                lines.append(
                    f"\n{v}: {len(step[v]['step_s']) - step[v]['warmup_steps']} "
                    f"measured step(s) after {step[v]['warmup_steps']} warm-up; load "
                    f"`{step[v]['uptime_before']}` before, "
                    f"`{step[v]['uptime_after']}` after."
                )
        lines.append("")
    if "reward" in results:
        reward = results["reward"]
        lines += [
            f"## Reward of demo-sized runs\n\n{reward['work']}.",
            "",
            "| | reward step 1 | reward last step | held-out acc before → after | "
            "median step (s) | peak RSS (GB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for v in VARIANTS:
            if v not in reward:
                continue
            lines.append(_reward_row(v, reward[v]))
        for v in VARIANTS:
            if v in reward:
                rewards = [round(x, 2) for x in reward[v]["reward_mean"]]
                lines.append(
                    f"\n{v}: rewards per step {rewards}; load "
                    f"`{reward[v]['uptime_before']}` before, "
                    f"`{reward[v]['uptime_after']}` after."
                )
        lines.append("")
    return "\n".join(lines)


def _reward_row(variant: str, r: dict) -> str:
    """One table row; a run cut short shows how many steps it reached and no final numbers."""
    median_step_s = sorted(r["step_s"])[len(r["step_s"]) // 2]
    done = "peak_rss_gb" in r
    name = variant if done else f"{variant} (partial: {len(r['reward_mean'])} steps)"
    after = f"{r['eval_accuracy_after']:.2f}" if "eval_accuracy_after" in r else "—"
    rss = f"{r['peak_rss_gb']:.2f}" if done else "—"
    return (
        f"| {name} | {r['reward_mean'][0]:.2f} | {r['reward_mean'][-1]:.2f} | "
        f"{r.get('eval_accuracy_before', float('nan')):.2f} → {after} | {median_step_s:.1f} | "
        f"{rss} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["step", "reward", "all"])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps (step: 3) or steps of the run (reward: 16)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/keel/models")
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="which runs, in this order",
    )
    parser.add_argument(
        "--precision",
        default="bf16",
        help="rollout precision of the reward runs (the demo's bf16; fp32 on a CPU whose bf16 "
        "is emulated, e.g. AVX2-only, where bf16 is many times slower)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.kind, args.child, args.steps, args.cache_dir, args.precision)
        return
    step_time._model_dir(args.cache_dir)  # convert once, outside the measured children
    if args.kind in ("step", "all"):
        measure_steps(args.steps or 3, args.warmup, args.cache_dir, args.variants)
    if args.kind in ("reward", "all"):
        measure_reward(args.steps or DEMO_STEPS, args.cache_dir, args.precision, args.variants)


if __name__ == "__main__":
    main()
