"""The k-GPU path of one job on one node, prepared for a CUDA machine with ≥ 2 GPUs (it has not run
on one yet; docs/how-to/distributed.md). Each part fits in 10 minutes:

    python scripts/gpu_distributed.py fsdp       # NCCL + FSDP2 on k GPUs against 1 GPU
    python scripts/gpu_distributed.py vllm       # the same, rank 0 sampling with vLLM
    python scripts/gpu_distributed.py fsdp --cpu # a dry run of the script itself: 2 gloo ranks

`fsdp` trains `tiny-moe` with R3 for 2 steps in one process on cuda:0 and on k ranks
(`torchrun --nproc-per-node k -m keel_worker.training`), then prints the largest weight
difference after each step (CUDA kernels are not bitwise deterministic across shapes, so it
reports rather than asserts: the CPU tests hold the 1e-6 law) and both runs' metrics. `vllm`
repeats the k-rank run with
`rollout.engine = "vllm"` (rank 0's engine, sharing cuda:0; `KEEL_VLLM_TENSOR_PARALLEL_SIZE`
would give it more GPUs in the service) and prints its mismatch metrics.

Writes `gpu_distributed_<part>.json` under `$OUT` (or the current folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / p) for p in ("client", "server", "worker")]
STEPS = 2
CONFIG = {
    "model": {"name": "tiny-moe"},
    "routing_replay": "R3",
    "prompts_per_step": 4,
    "group_size": 4,
    "num_minibatches": 2,
    "micro_batch_size": 2,
    "rollout": {"max_new_tokens": 16},
    "steps": STEPS,
    "eval_every": 0,
    "checkpoint_every": 1,
    "optimizer": {"lr": 1e-2, "grad_clip": 100.0, "eps": 1e-2},
}


def _env() -> dict[str, str]:
    path = os.pathsep.join(str(REPO / p) for p in ("client", "server", "worker"))
    return {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _train(workdir: Path, config: dict, ranks: int) -> list[dict]:
    """The training entry point on `ranks` processes (torchrun when more than one); its JSON
    lines (rank 0 prints them)."""
    entry = ["-m", "keel_worker.training", "--workdir", str(workdir)]
    entry += ["--config", json.dumps(config), "--no-resume"]
    if ranks == 1:
        cmd = [sys.executable, *entry]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(ranks), *entry]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=540)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _weight_diff(a: Path, b: Path, step: int) -> float:
    from safetensors.torch import load_file

    from keel_worker.training.checkpoint import checkpoint_dir

    name = "model.safetensors"
    wa, wb = load_file(checkpoint_dir(a, step) / name), load_file(checkpoint_dir(b, step) / name)
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def main(part: str, *, cpu: bool) -> int:
    import torch

    gpus = 2 if cpu else torch.cuda.device_count()
    if gpus < 2:
        raise SystemExit(f"needs ≥ 2 CUDA GPUs, found {gpus}")
    config = dict(CONFIG)
    if part == "vllm":
        config["rollout"] = {**CONFIG["rollout"], "engine": "vllm"}
    elif part != "fsdp":
        raise SystemExit("part is fsdp or vllm")
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        single = _train(one, config, 1)
        sharded = _train(many, config, gpus)
        result = {
            "part": part,
            "gpus": gpus,
            "gpu": "cpu (dry run)" if cpu else torch.cuda.get_device_name(0),
            "max_weight_diff_by_step": {s: _weight_diff(one, many, s) for s in range(1, STEPS + 1)},
            "metrics_one_process": single,
            "metrics_k_ranks": sharded,
        }
    out = Path(os.environ.get("OUT", ".")) / f"gpu_distributed_{part}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("part", "gpus", "max_weight_diff_by_step")}))
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--cpu"]
    sys.exit(main(args[0] if args else "fsdp", cpu="--cpu" in sys.argv))
