"""Prepared for a GPU: the key cells of the stress suite on a small real MoE with vLLM
fp8 rollouts and long chain-of-thought answers, in parts of at most 10 minutes each.

    bash scripts/gpu_fidelity.sh PART     # one part, under `timeout`; writes $OUT/<part>.json
    python scripts/gpu_fidelity.py --check   # on any machine: builds every part's config, prints
                                             # the plan (what CI runs)

**Model.** `KEEL_GPU_MOE`, a local Hugging Face MoE directory (e.g. OLMoE-1B-7B-Instruct or
Qwen1.5-MoE-A2.7B-Chat: the GPU machine reaches nothing outside, so the weights must already be
there), else the built-in `tiny-moe-deep` at its random initialization, which exercises the
plumbing only: no finding can show on it, and every record says which model ran.

**Task.** `a + b × c` with three 2–3 digit numbers, asked to think step by step; the `numeric`
verifier scores the last integer of the answer, and `LONG_TOKENS` new tokens leave room for a
worked chain of thought: the response length over which the per-token mismatch adds up.

**Rollouts and training.** vLLM with `fp8` weights (a scale per output channel), the trainer in
bf16 on the GPU; the paper's MiniRL defaults otherwise. A real MoE trains LoRA adapters (rank
`LORA_RANK`, lr `LORA_LR`): full fine-tuning of a 7B-parameter MoE with AdamW's fp32 states does
not fit one 80 GB GPU beside vLLM. keel's LoRA keeps the routers frozen, so the θ_old-vs-θ routing
flip comes only from the adapted layers around them (a cut of its own). The fallback model trains
every weight at the stress suite's lr (`FULL_LR`).

**Parts** (`PARTS`; one `train()` each, `STEPS` global steps of `PROMPTS` × `GROUP`, under
`timeout 540` in the shell script; the metrics of every step are written as it ends, so a part cut
by its timeout keeps what it did):

    probe       MiniRL, N = 1, 4 steps: the mismatch itself (k3 per token and per response,
                IS truncation, routing flips engine vs trainer)
    f1-minirl   MiniRL, N = 1                    f1-noIS    MiniRL without the IS weight
    f4-clip     MiniRL + R3, N = 4               f4-noclip  MiniRL without clipping or replay
    f9-mu       MiniRL, μ-anchored mask, N = 4   f9-dppo    DPPO-TV, N = 4

**Cut** (declared): one seed per part (the fidelity rules need ≥ 2 a side, so these records are a
first look, not verdicts); `STEPS` steps against the paper's hundreds; the model is whatever fits
one GPU and is already on the machine; the held-out evaluation is `EVAL_SIZE` prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from keel.types.training import TrainingConfig

LONG_TOKENS = 512
STEPS = 16
PROMPTS, GROUP = 8, 8
EVAL_SIZE = 32
ITEMS = 400
FALLBACK_MODEL = "tiny-moe-deep"
LORA_RANK, LORA_LR, FULL_LR = 16, 1e-4, 3e-4
PARTS: dict[str, dict[str, Any]] = {
    "probe": {"algorithm": {"name": "minirl"}, "num_minibatches": 1, "steps": 4},
    "f1-minirl": {"algorithm": {"name": "minirl"}, "num_minibatches": 1},
    "f1-noIS": {"algorithm": {"name": "reinforce"}, "num_minibatches": 1},
    "f4-clip": {"algorithm": {"name": "minirl"}, "num_minibatches": 4, "routing_replay": "R3"},
    "f4-noclip": {"algorithm": {"name": "minirl", "use_clip": False}, "num_minibatches": 4},
    "f9-mu": {
        "algorithm": {"name": "minirl", "clip_anchor": "mu_old"},
        "num_minibatches": 4,
        "routing_replay": "R3",
    },
    "f9-dppo": {"algorithm": {"name": "dppo_tv"}, "num_minibatches": 4, "routing_replay": "R3"},
}


def items(seed: int = 30) -> list[dict[str, str]]:
    """The task's prompts: a + b × c, answered after a worked chain of thought."""
    rng = random.Random(seed)
    out = []
    for _ in range(ITEMS):
        a, b, c = rng.randint(10, 999), rng.randint(10, 99), rng.randint(10, 99)
        out.append(
            {
                "prompt": f"What is {a} + {b} × {c}? Think step by step, then end with the "
                "final answer as a plain integer.",
                "answer": str(a + b * c),
            }
        )
    return out


def model_name() -> str:
    return os.environ.get("KEEL_GPU_MOE") or FALLBACK_MODEL


def config(part: str) -> TrainingConfig:
    spec = dict(PARTS[part])
    steps = spec.pop("steps", STEPS)
    real = model_name() != FALLBACK_MODEL
    if real:
        spec["lora"] = {"rank": LORA_RANK}
    spec["optimizer"] = {"lr": LORA_LR if real else FULL_LR}
    return TrainingConfig.model_validate(
        {
            "model": {"name": model_name()},
            "task": {"name": "dataset", "items": items(), "verifier": "numeric"},
            "rollout": {"engine": "vllm", "precision": "fp8", "max_new_tokens": LONG_TOKENS},
            "train_dtype": "bf16",
            "prompts_per_step": PROMPTS,
            "group_size": GROUP,
            "steps": steps,
            "eval_every": steps,
            "eval_size": EVAL_SIZE,
            "checkpoint_every": 0,
            "seed": 0,
            **spec,
        }
    )


def run(part: str, out_dir: Path) -> None:
    import torch

    from keel_server.platform.settings import Settings
    from keel_worker.engines.vllm import VLLMOptions
    from keel_worker.training.run import train

    cfg = config(part)
    record: dict[str, Any] = {
        "part": part,
        "model": model_name(),
        "plumbing_only": model_name() == FALLBACK_MODEL,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "config": cfg.model_dump(mode="json", exclude={"task": {"items"}}),
        "steps": [],
    }
    path = out_dir / f"{part}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    workdir = Path(os.environ.get("KEEL_GPU_WORKDIR", "/tmp/keel_gpu_fidelity")) / part
    for result in train(
        cfg,
        workdir=workdir,
        resume=False,
        device="cuda",
        vllm_options=VLLMOptions.from_settings(Settings()),
    ):
        record["steps"].append({"step": result.step, **result.metrics})
        record["wall_s"] = time.monotonic() - started
        path.write_text(json.dumps(record, indent=1) + "\n")  # a timeout keeps what is done
        print(f"{part} step {result.step}: {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=sorted(PARTS))
    parser.add_argument("--check", action="store_true", help="build every config, run nothing")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_fidelity")))
    args = parser.parse_args(argv)
    if args.check:
        for part in PARTS:
            cfg = config(part)
            print(
                f"{part:10s} {cfg.steps:3d} steps × {cfg.prompts_per_step} × {cfg.group_size}, "
                f"N = {cfg.num_minibatches}, {cfg.algorithm.name}, {model_name()}"
            )
        return 0
    if args.part is None:
        parser.error("name a part, or --check")
    run(args.part, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
