"""RL step time: keel against TRL's GRPOTrainer on identical work (issue 3).

Work per step, for both: SmolLM2-135M-Instruct, the addition task, 8 prompts × 8 samples, at most
64 new tokens, T = 1, fp32, one optimizer step per batch, no KL, lr 1e-5. Each framework runs in
its own subprocess so that its peak RSS is its own; the parent reports the median step time after
warm-up, the generation/training split, peak RSS and the keel/TRL ratio, and writes
`bench/results/step_time.json` and `.md`.

    .venv/bin/python bench/step_time.py                 # 1 warm-up + 4 measured steps each
    .venv/bin/python bench/step_time.py --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keel_worker.engines.hardware import device_profile

RESULTS = Path(__file__).resolve().parent / "results"
B, G, MAX_NEW_TOKENS, LR, SEED = 8, 8, 64, 1e-5, 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _model_dir(cache_dir: Path) -> Path:
    """The converted SmolLM2 safetensors directory both frameworks load."""
    from keel_worker.engines import smollm2

    return smollm2.ensure_converted(smollm2.smollm2_gguf_path(), cache_dir)


def keel_config(steps: int, cache_dir: Path, **overrides):
    """The benchmark's work as a keel `TrainingConfig` (`overrides`: e.g. `lora={}`)."""
    from keel.types.training import TrainingConfig

    return TrainingConfig(
        model={"name": str(_model_dir(cache_dir))},
        prompts_per_step=B, group_size=G, num_minibatches=1, micro_batch_size=16,
        rollout={"max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "precision": "fp32"},
        optimizer={"lr": LR, "grad_clip": 1.0}, train_dtype="fp32",
        steps=steps, eval_every=0, seed=SEED, **overrides,
    )


def run_keel(steps: int, cache_dir: Path, **overrides) -> dict:
    from keel_worker.training.run import train

    config = keel_config(steps, cache_dir, **overrides)
    out = {"step_s": [], "generate_s": [], "reward_mean": []}
    with tempfile.TemporaryDirectory() as workdir:
        for result in train(config, workdir=Path(workdir), resume=False, cache_dir=cache_dir):
            m = result.metrics
            out["step_s"].append(m["time/step_s"])
            out["generate_s"].append(m["time/generate_s"])
            out["reward_mean"].append(m["reward/mean"])
    return out


def run_trl(steps: int, cache_dir: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from keel.types.training import TaskConfig
    from keel_worker.training.tasks import build_task, integer_reward

    model_dir = _model_dir(cache_dir)
    task = build_task(TaskConfig())
    items = [task.train_items[i % len(task.train_items)] for i in range(B * steps)]
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": it.prompt}], "answer": it.answer} for it in items]
    )

    def reward(completions, answer, **_):
        pairs = zip(completions, answer, strict=True)
        return [integer_reward(c[0]["content"], a) for c, a in pairs]

    out: dict = {"step_s": [], "generate_s": [], "reward_mean": []}

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            out["step_s"].append(time.perf_counter() - self.t0)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "reward" in logs:
                out["reward_mean"].append(logs["reward"])

    with tempfile.TemporaryDirectory() as outdir:
        args = GRPOConfig(
            output_dir=outdir, per_device_train_batch_size=B * G, num_generations=G,
            max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
            learning_rate=LR, beta=0.0, num_iterations=1, gradient_accumulation_steps=1,
            max_steps=steps, logging_steps=1, report_to=[], use_cpu=True, bf16=False,
            gradient_checkpointing=False, save_strategy="no", seed=SEED, max_grad_norm=1.0,
            lr_scheduler_type="constant", warmup_steps=0,
        )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            reward_funcs=reward, args=args, train_dataset=dataset, callbacks=[Timer()],
        )
        generate = trainer._generate_and_score_completions

        def timed_generate(*a, **kw):
            t0 = time.perf_counter()
            result = generate(*a, **kw)
            out["generate_s"].append(time.perf_counter() - t0)
            return result

        trainer._generate_and_score_completions = timed_generate
        trainer.train()
    return out


def child(framework: str, steps: int, cache_dir: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    result = (run_keel if framework == "keel" else run_trl)(steps, cache_dir)
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


def summarize(raw: dict, warmup: int) -> dict:
    step = raw["step_s"][warmup:]
    gen = raw["generate_s"][warmup : warmup + len(step)]
    median_step = statistics.median(step)
    median_gen = statistics.median(gen)
    return {
        "median_step_s": median_step,
        "median_generate_s": median_gen,
        "median_train_s": statistics.median(s - g for s, g in zip(step, gen, strict=True)),
        "peak_rss_gb": raw["peak_rss_bytes"] / 1e9,
        "reward_mean_per_step": raw["reward_mean"],
        "step_s": raw["step_s"],
    }


def spawn(framework: str, steps: int, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", framework, "--steps", str(steps),
           "--cache-dir", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{framework} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def write_results(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "step_time.json").write_text(json.dumps(results, indent=2) + "\n")
    k, t = results["keel"], results["trl"]
    rows = [
        ("median step (s)", k["median_step_s"], t["median_step_s"]),
        ("  generation (s)", k["median_generate_s"], t["median_generate_s"]),
        ("  training (s)", k["median_train_s"], t["median_train_s"]),
        ("peak RSS (GB)", k["peak_rss_gb"], t["peak_rss_gb"]),
    ]
    lines = [
        "# RL step time: keel vs TRL GRPOTrainer",
        "",
        f"{results['work']}. Median over {results['measured_steps']} steps after "
        f"{results['warmup_steps']} warm-up step(s); each framework in its own process.",
        f"Machine: {results['machine']}.",
        "",
        "| | keel | TRL |",
        "|---|---:|---:|",
        *[f"| {name} | {kv:.2f} | {tv:.2f} |" for name, kv, tv in rows],
        "",
        f"Ratio keel / TRL (median step time): **{results['ratio_step_time']:.2f}**; "
        f"peak RSS ratio: **{results['ratio_peak_rss']:.2f}**.",
        "",
        f"Mean reward per step, keel: {[round(x, 2) for x in k['reward_mean_per_step']]}; "
        f"TRL: {[round(x, 2) for x in t['reward_mean_per_step']]}.",
        "",
    ]
    (RESULTS / "step_time.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps per framework")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/keel/models")
    parser.add_argument("--child", choices=["keel", "trl"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.cache_dir)  # the parent passes the total
        return
    total = args.steps + args.warmup
    _model_dir(args.cache_dir)  # convert once, outside the timed children
    results: dict = {
        "work": f"SmolLM2-135M-Instruct, addition, {B} prompts × {G} samples, ≤{MAX_NEW_TOKENS} "
        f"new tokens, T=1, fp32, 1 optimizer step per batch, no KL, lr {LR}",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores",
        # The CPU model, its bf16 flags and GEMM rates per dtype, measured here as a job's worker
        # does (keel_worker.engines.hardware); this work is fp32, so that is what both compute in.
        "device_profile": device_profile("cpu").to_json(),
        "load_1min_before": round(os.getloadavg()[0], 2),
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
    }
    for framework in ("keel", "trl"):
        results[framework] = summarize(spawn(framework, total, args.cache_dir), args.warmup)
        print(framework, json.dumps(results[framework]), flush=True)
    results["measured_steps"] = len(results["keel"]["step_s"]) - args.warmup
    results["ratio_step_time"] = results["keel"]["median_step_s"] / results["trl"]["median_step_s"]
    results["ratio_peak_rss"] = results["keel"]["peak_rss_gb"] / results["trl"]["peak_rss_gb"]
    write_results(results)
    print(json.dumps({k: results[k] for k in ("ratio_step_time", "ratio_peak_rss")}))


if __name__ == "__main__":
    main()
