"""What the Tinker path adds to a training step: the same batch, the same model, two ways.

- Tinker: the unmodified `tinker` SDK (`bench/tinker_step_client.py`, run from `.venv-tinker`)
  against `keel up` on this machine: forward_backward(`minirl`) + optim_step, timed from the
  first request to both results in hand (HTTP, the request queue, the worker, the wire codec);
- in-process: keel's resident model (`keel_worker.tinker.resident.ResidentModel`, the one the
  worker serves the Tinker routes with) called directly here: `forward(backward=True)` +
  `optim_step` on the identical batch.

The batch is fixed: `BATCH` sequences of `PROMPT_TOKENS` + `RESPONSE_TOKENS` random token ids,
advantages ±1 on the response, μ logprobs from the base model plus a little noise (so the IS
ratios are not all 1), `norm` = `BATCH` (keel's per-response sum). The in-process steps run
before and after the Tinker ones (A-B-A, so drift in the machine's load shows), with `keel up`
running throughout. Target: Tinker median / in-process median ≤ `TARGET_RATIO`.

    python -m bench.tinker_step        # writes bench/results/tinker_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import keel
from bench.machine import describe_machine, load_averages

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "tinker_step.json"
TINKER_PYTHON = REPO / ".venv-tinker" / "bin" / "python"
CLIENT = REPO / "bench" / "tinker_step_client.py"
TARGET_RATIO = 1.10
MODEL = "smollm2-135m-instruct"
LORA_RANK = 16
SEED = 0
BATCH = 8
PROMPT_TOKENS = 32
RESPONSE_TOKENS = 32
ADAM = {"learning_rate": 1e-5, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12}
LOSS_FN = "minirl"
LOSS_FN_CONFIG = {"norm": float(BATCH)}


def make_batch(model: Any, vocab_size: int, seed: int) -> list[dict[str, Any]]:
    """The fixed batch as plain lists: one row per sequence, Tinker's shift (tokens[i] predicts
    target_tokens[i]), inputs zero on the prompt."""
    rng = np.random.default_rng(seed)
    length = PROMPT_TOKENS + RESPONSE_TOKENS
    sequences_B_S = rng.integers(3, vocab_size, size=(BATCH, length + 1))
    with torch.no_grad():
        logits_B_T_V = model(torch.as_tensor(sequences_B_S[:, :-1])).logits.float()
    targets_B_T = torch.as_tensor(sequences_B_S[:, 1:])
    logp_B_T = torch.log_softmax(logits_B_T_V, -1).gather(-1, targets_B_T[..., None])[..., 0]
    response_T = np.arange(length) >= PROMPT_TOKENS - 1
    rows = []
    for b in range(BATCH):
        advantage = 1.0 if b % 2 == 0 else -1.0
        mu_T = logp_B_T[b].numpy() + rng.normal(0.0, 0.05, size=length)
        rows.append(
            {
                "tokens": sequences_B_S[b, :-1].tolist(),
                "inputs": {
                    "target_tokens": sequences_B_S[b, 1:].tolist(),
                    "logprobs": np.where(response_T, mu_T, 0.0).tolist(),
                    "advantages": np.where(response_T, advantage, 0.0).tolist(),
                },
            }
        )
    return rows


def time_in_process(resident: Any, rows: list[dict[str, Any]], steps: int) -> list[float]:
    from keel_worker.tinker.batch import AdamParams, Datum

    data = [
        Datum(
            tokens=row["tokens"],
            inputs={
                name: np.asarray(v, dtype=np.int64 if name == "target_tokens" else np.float32)
                for name, v in row["inputs"].items()
            },
        )
        for row in rows
    ]
    adam = AdamParams(**ADAM)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        resident.forward(data, LOSS_FN, LOSS_FN_CONFIG, backward=True)
        resident.optim_step(adam)
        seconds.append(time.perf_counter() - started)
    return seconds


def time_tinker(spec_path: Path, url: str, keel_key: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "TINKER_"))}
    env.update(
        TINKER_BASE_URL=f"{url}/tinker", TINKER_API_KEY=f"tml-{keel_key}", TINKER_TELEMETRY="0"
    )
    done = subprocess.run(
        [str(TINKER_PYTHON), str(CLIENT), str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Tinker client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def summarize(in_process_a: list[float], tinker: list[float], in_process_b: list[float]) -> dict:
    baseline = statistics.median(in_process_a + in_process_b)
    ratio = statistics.median(tinker) / baseline
    return {
        "in_process_s": {"before": in_process_a, "after": in_process_b, "median": baseline},
        "tinker_s": {"steps": tinker, "median": statistics.median(tinker)},
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
    }


def run(home: Path, steps: int, warmup: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "scripts"))
    from demo_service import KeelService, choose_port

    from keel_worker.engines.models import load_model
    from keel_worker.tinker.resident import ResidentModel

    loaded = load_model(MODEL, cache_dir=home / "models")
    rows = make_batch(loaded.model, int(loaded.model.get_input_embeddings().num_embeddings), SEED)
    resident = ResidentModel.create(loaded, lora_rank=LORA_RANK, seed=SEED)
    spec = {
        "model": MODEL,
        "lora_rank": LORA_RANK,
        "seed": SEED,
        "adam": ADAM,
        "loss_fn": LOSS_FN,
        "loss_fn_config": LOSS_FN_CONFIG,
        "warmup": warmup,
        "steps": steps,
        "data": rows,
    }
    spec_path = home / "tinker_step_batch.json"
    spec_path.write_text(json.dumps(spec))
    service = KeelService(home, choose_port(8000))
    admin_key = service.start()
    try:
        with keel.Client(base_url=service.url, api_key=admin_key) as client:
            keel_key = client.keys.create(project="tinker-bench", name="tinker-step").key
        time_in_process(resident, rows, warmup)
        before = time_in_process(resident, rows, steps)
        tinker = time_tinker(spec_path, service.url, keel_key)
        after = time_in_process(resident, rows, steps)
    finally:
        service.stop()
    return summarize(before, tinker, after)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per side (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not TINKER_PYTHON.exists():
        raise SystemExit("no .venv-tinker: run `make tinker-venv` first")
    load_before = load_averages()
    with tempfile.TemporaryDirectory(prefix="keel-tinker-step-") as tmp:
        result = run(Path(tmp), args.steps, args.warmup)
    result["workload"] = {
        "model": MODEL,
        "lora_rank": LORA_RANK,
        "batch": BATCH,
        "prompt_tokens": PROMPT_TOKENS,
        "response_tokens": RESPONSE_TOKENS,
        "loss_fn": LOSS_FN,
        "loss_fn_config": LOSS_FN_CONFIG,
    }
    result["machine"] = describe_machine(load_before=load_before, load_after=load_averages())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"in-process {result['in_process_s']['median']:.2f} s, Tinker "
        f"{result['tinker_s']['median']:.2f} s: ratio {result['ratio']:.3f} "
        f"(target ≤ {TARGET_RATIO})"
    )
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
