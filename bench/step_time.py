"""RL step time: keel against TRL's GRPOTrainer on identical work.

Work per step, for both: SmolLM2-135M-Instruct, the addition task, 8 prompts × 8 samples, at most
64 new tokens, T = 1, one optimizer step per batch, no KL, lr 1e-5, in one of two precisions
(`--preset`):

- `fp32`: fp32 rollouts and training, for both;
- `recommended`: keel's recommended settings, bf16 rollouts (`rollout.precision="bf16"`) and
  bf16 training compute (`train_dtype="bf16"`), which keel runs natively where the CPU has bf16
  and emulates in fp32 on bf16-rounded values where it has not (`engines.hardware`); TRL gets its
  own best bf16 settings: the model loaded in bf16 and `bf16=True`.

Each framework runs in its own subprocess so that its peak RSS is its own; the parent reports the
median step time after warm-up, the generation/training split, peak RSS and the keel/TRL ratio.
After its steps, keel's process also measures this machine's limits (`bench/roofline.py`): the
GEMM peak in the dtype it computes in, the memory bandwidth, the FLOP/s its training
forward+backward reaches on a step-shaped micro-batch, and its generation's tokens/s against the
bound of reading the weights once per decode step. Results: `bench/results/step_time.{json,md}`
(fp32) and `bench/results/step_time_recommended.{json,md}`.

    .venv/bin/python bench/step_time.py                 # fp32, 1 warm-up + 4 measured steps each
    .venv/bin/python bench/step_time.py --preset recommended --steps 2
    .venv/bin/python bench/step_time.py --frameworks keel   # keel only (the TRL numbers are kept)
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

from keel.types import metric_names as metric
from keel_worker.engines.hardware import device_profile

RESULTS = Path(__file__).resolve().parent / "results"
B, G, MAX_NEW_TOKENS, LR, SEED = 8, 8, 64, 1e-5, 0
MICRO_BATCH = 16
# preset -> (keel rollout precision, keel train_dtype, TRL bf16): what each framework is given.
PRESETS = {"fp32": ("fp32", "fp32", False), "recommended": ("bf16", "bf16", True)}
FRAMEWORKS = ("keel", "trl")


def result_stem(preset: str) -> str:
    return "step_time" if preset == "fp32" else f"step_time_{preset}"


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _model_dir(cache_dir: Path) -> Path:
    """The converted SmolLM2 safetensors directory both frameworks load."""
    from keel_worker.engines import smollm2

    return smollm2.ensure_converted(smollm2.smollm2_gguf_path(), cache_dir)


def keel_config(steps: int, cache_dir: Path, preset: str = "fp32", **overrides):
    """The benchmark's work as a keel `TrainingConfig` (`overrides`: e.g. `lora={}`)."""
    from keel.types.training import TrainingConfig

    precision, train_dtype, _ = PRESETS[preset]
    return TrainingConfig(
        model={"name": str(_model_dir(cache_dir))},
        prompts_per_step=B,
        group_size=G,
        num_minibatches=1,
        micro_batch_size=MICRO_BATCH,
        rollout={"max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "precision": precision},
        optimizer={"lr": LR, "grad_clip": 1.0},
        train_dtype=train_dtype,
        steps=steps,
        eval_every=0,
        seed=SEED,
        **overrides,
    )


def run_keel(steps: int, cache_dir: Path, preset: str = "fp32", **overrides) -> dict:
    from keel_worker.training.run import train

    config = keel_config(steps, cache_dir, preset, **overrides)
    out = {"step_s": [], "generate_s": [], "reward_mean": [], "response_len": []}
    with tempfile.TemporaryDirectory() as workdir:
        for result in train(config, workdir=Path(workdir), resume=False, cache_dir=cache_dir):
            m = result.metrics
            out["step_s"].append(m[metric.TIME_STEP])
            out["generate_s"].append(m[metric.TIME_GENERATE])
            out["reward_mean"].append(m[metric.REWARD_MEAN])
            out["response_len"].append(m[metric.RESPONSE_LENGTH_MEAN])
    return out


def keel_limits(cache_dir: Path, preset: str, raw: dict, warmup: int) -> dict:
    """This machine's roofs and how near keel's work comes to them (`bench/roofline.py`), in the
    process that just ran the steps; the compute dtype is the one keel's forward picks."""
    import roofline
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from keel.types.training import TaskConfig
    from keel_worker.engines.chat import encode_prompt
    from keel_worker.training.tasks import build_task

    bf16 = PRESETS[preset][1] == "bf16"
    compute = "bf16" if bf16 and device_profile("cpu").bf16_native else "fp32"
    model_dir = _model_dir(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    items = build_task(TaskConfig()).train_items[: MICRO_BATCH // G]
    prompts = [encode_prompt(tokenizer, item.prompt) for item in items]
    measured = slice(warmup, None)
    response_len = round(statistics.mean(raw["response_len"][measured]))
    train = roofline.train_forward_backward(
        model, prompts, group_size=G, response_len=response_len, bf16=bf16
    )
    tokens = MICRO_BATCH * (response_len + statistics.mean(map(len, prompts)))
    # The peak in the dtype the work computes in (an emulated bf16 GEMM on an AVX2 CPU runs at
    # about 1 GFLOP/s: timing it on the LM head's shape would take minutes and judge nothing).
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[compute]
    gemm = {compute: roofline.gemm_peak(dtype, roofline.model_gemm_shapes(model, int(tokens)))}
    bandwidth = roofline.memory_bandwidth()
    # The engine decodes from the weights in its compute dtype (fp32: the trainer's own tensors;
    # fp32 too where bf16 is emulated: bf16-rounded values), read once per decode step for all
    # B × G.
    params = sum(p.numel() for p in model.parameters())  # the tied embedding once: the LM head
    weight_bytes = params * (2 if compute == "bf16" else 4)
    generated = [n * B * G for n in raw["response_len"][measured]]
    tokens_per_s = statistics.median(
        n / s for n, s in zip(generated, raw["generate_s"][measured], strict=True)
    )
    bound = B * G * bandwidth * 1e9 / weight_bytes
    # With B × G rows a decode step is also 2 FLOPs per weight per row: the compute roof.
    compute_bound = gemm[compute]["peak_gflops"] * 1e9 / (2 * params)
    return {
        "compute_dtype": compute,
        "gemm": gemm,
        "train_forward_backward": train,
        "train_share_of_peak": train["gflops"] / gemm[compute]["peak_gflops"],
        "memory_bandwidth_gbs": bandwidth,
        "decode_weight_bytes": weight_bytes,
        "generate_tokens_per_s": tokens_per_s,
        "generate_bound_tokens_per_s": bound,
        "generate_share_of_bound": tokens_per_s / bound,
        "generate_compute_bound_tokens_per_s": compute_bound,
        "generate_share_of_roof": tokens_per_s / min(bound, compute_bound),
    }


def run_trl(steps: int, cache_dir: Path, preset: str = "fp32") -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from keel.types.training import TaskConfig
    from keel_worker.training.tasks import build_task, integer_reward

    model_dir = _model_dir(cache_dir)
    bf16 = PRESETS[preset][2]
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
            output_dir=outdir,
            per_device_train_batch_size=B * G,
            num_generations=G,
            max_completion_length=MAX_NEW_TOKENS,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            learning_rate=LR,
            beta=0.0,
            num_iterations=1,
            gradient_accumulation_steps=1,
            max_steps=steps,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            gradient_checkpointing=False,
            save_strategy="no",
            seed=SEED,
            max_grad_norm=1.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            bf16=bf16,
        )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(
                model_dir, dtype="bfloat16" if bf16 else "float32"
            ),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            reward_funcs=reward,
            args=args,
            train_dataset=dataset,
            callbacks=[Timer()],
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


def child(framework: str, steps: int, cache_dir: Path, preset: str, warmup: int) -> None:
    import torch

    torch.manual_seed(SEED)
    result = (run_keel if framework == "keel" else run_trl)(steps, cache_dir, preset)
    result["peak_rss_bytes"] = _peak_rss_bytes()  # the steps' peak, before the limits below
    result["torch_threads"] = torch.get_num_threads()
    if framework == "keel":
        result["limits"] = keel_limits(cache_dir, preset, result, warmup)
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
        **({"limits": raw["limits"]} if "limits" in raw else {}),
    }


def spawn(
    framework: str, steps: int, cache_dir: Path, preset: str = "fp32", warmup: int = 1
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        framework,
        "--steps",
        str(steps),
        "--cache-dir",
        str(cache_dir),
        "--preset",
        preset,
        "--warmup",
        str(warmup),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{framework} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def write_results(results: dict, preset: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = result_stem(preset)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    k, t = results["keel"], results["trl"]
    rows = [
        ("median step (s)", "median_step_s"),
        ("  generation (s)", "median_generate_s"),
        ("  training (s)", "median_train_s"),
        ("peak RSS (GB)", "peak_rss_gb"),
    ]
    lines = [
        f"# RL step time: keel vs TRL GRPOTrainer ({preset})",
        "",
        f"{results['work']}. Median over the measured steps after the warm-up step(s); each "
        "framework in its own process.",
        f"Machine: {results['machine']}.",
        "",
        "| | keel | TRL |",
        "|---|---:|---:|",
        *[f"| {name} | {k[key]:.2f} | {t[key]:.2f} |" for name, key in rows],
        "",
        f"Ratio keel / TRL (median step time): **{results['ratio_step_time']:.2f}**; "
        f"peak RSS ratio: **{results['ratio_peak_rss']:.2f}**.",
        "",
        f"Mean reward per step, keel: {[round(x, 2) for x in k['reward_mean_per_step']]}; "
        f"TRL: {[round(x, 2) for x in t['reward_mean_per_step']]}.",
        "",
        *[
            f"{name}: {r['measured_steps']} measured step(s) after {r['warmup_steps']} warm-up; "
            f"load `{r['uptime_before']}` before, `{r['uptime_after']}` after."
            for name, r in (("keel", k), ("TRL", t))
        ],
        "",
    ]
    if "limits" in k:
        lines += limits_lines(k["limits"])
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))


def limits_lines(limits: dict) -> list[str]:
    """The roofline section of the report (see `bench/roofline.py` for what each number is)."""
    train, compute = limits["train_forward_backward"], limits["compute_dtype"]
    peaks = ", ".join(f"{name} {g['peak_gflops']:.1f}" for name, g in limits["gemm"].items())
    return [
        "## Against this machine's limits (measured in keel's process, after its steps)",
        "",
        f"- GEMM peak (GFLOP/s, best over the model's shapes and 1024²/2048² squares): {peaks}; "
        f"keel computes in **{compute}** here.",
        f"- Training forward+backward on a step-shaped micro-batch ({train['rows']} responses "
        f"of {train['response_len']} tokens, {train['input_tokens']} input tokens): "
        f"{train['flops'] / 1e9:.1f} GFLOP (counted by `FlopCounterMode`) in "
        f"{train['median_s']:.2f} s = **{train['gflops']:.1f} GFLOP/s, "
        f"{100 * limits['train_share_of_peak']:.0f}% of the {compute} GEMM peak**.",
        f"- Generation: **{limits['generate_tokens_per_s']:.0f} tokens/s** against the bound of "
        f"reading the weights ({limits['decode_weight_bytes'] / 1e6:.0f} MB) once per decode "
        f"step for all {B * G} samples at {limits['memory_bandwidth_gbs']:.1f} GB/s (copy): "
        f"{limits['generate_bound_tokens_per_s']:.0f} tokens/s, "
        f"**{100 * limits['generate_share_of_bound']:.0f}% of the bound**. At {B * G} rows a "
        f"decode step is also compute: 2 FLOPs per weight per token at the GEMM peak give "
        f"{limits['generate_compute_bound_tokens_per_s']:.0f} tokens/s, so the lower roof is "
        f"met at {100 * limits['generate_share_of_roof']:.0f}%.",
        "",
    ]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fp32")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per framework")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--frameworks",
        nargs="+",
        choices=FRAMEWORKS,
        default=list(FRAMEWORKS),
        help="which to run; the others' numbers are kept from the results file",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/keel/models")
    parser.add_argument("--child", choices=FRAMEWORKS)
    args = parser.parse_args()
    if args.child:  # the parent passes the total steps
        child(args.child, args.steps, args.cache_dir, args.preset, args.warmup)
        return
    _model_dir(args.cache_dir)  # convert once, outside the timed children
    precision, train_dtype, trl_bf16 = PRESETS[args.preset]
    path = RESULTS / f"{result_stem(args.preset)}.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    profile = device_profile("cpu")
    results: dict = {
        "preset": args.preset,
        "work": f"SmolLM2-135M-Instruct, addition, {B} prompts × {G} samples, ≤{MAX_NEW_TOKENS} "
        f"new tokens, T=1, 1 optimizer step per batch, no KL, lr {LR}; keel: {precision} "
        f"rollouts, {train_dtype} training compute; TRL: "
        + ("model in bf16, `bf16=True`" if trl_bf16 else "fp32"),
        "machine": f"{profile.name}, {os.cpu_count()} cores ({platform.machine()})",
        # The CPU's bf16 flags and GEMM rates per dtype, measured as a job's worker does
        # (keel_worker.engines.hardware): what decides keel's compute dtype.
        "device_profile": profile.to_json(),
        **{f: kept[f] for f in FRAMEWORKS if f in kept and f not in args.frameworks},
    }
    for framework in args.frameworks:
        before = _uptime()
        raw = spawn(framework, args.steps + args.warmup, args.cache_dir, args.preset, args.warmup)
        results[framework] = {
            **summarize(raw, args.warmup),
            "warmup_steps": args.warmup,
            "measured_steps": len(raw["step_s"]) - args.warmup,
            "uptime_before": before,
            "uptime_after": _uptime(),
        }
        print(framework, json.dumps(results[framework]), flush=True)
    if not all(f in results for f in FRAMEWORKS):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")  # the other one runs later
        return
    k, t = results["keel"], results["trl"]
    results["ratio_step_time"] = k["median_step_s"] / t["median_step_s"]
    results["ratio_peak_rss"] = k["peak_rss_gb"] / t["peak_rss_gb"]
    write_results(results, args.preset)
    print(json.dumps({k: results[k] for k in ("ratio_step_time", "ratio_peak_rss")}))


if __name__ == "__main__":
    main()
