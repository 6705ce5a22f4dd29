"""Rollout throughput: the `vllm` engine (vLLM's CPU backend here) against keel's `hf` engine.

The same work for both, in one run: SmolLM2-135M-Instruct, 8 prompts × 8 samples = 64 samples of
exactly 64 new tokens (EOS ignored on both sides, so both generate 4,096 tokens), T = 1, at the
fastest precision this machine supports (bf16 where it is native, else fp32: see
`engines.precision.bf16_is_native`). Each engine gets one small warm-up generate first; the
engine start is reported separately. Writes `bench/results/vllm_throughput.json` and `.md` with
the CPU model and the machine load (`uptime`) before and after.

Needs the vLLM tier's venv:

    .venv-vllm/bin/python bench/vllm_throughput.py
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS, SAMPLES, MAX_NEW_TOKENS, SEED = 8, 8, 64, 0
TOPICS = ("the sea", "a robot", "winter", "a library", "trains", "the moon", "bread", "rain")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _time_generate(engine, prompt_ids, *, n: int, max_new_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    batch = engine.generate(
        prompt_ids, n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=SEED
    )
    elapsed = time.perf_counter() - t0
    return elapsed, sum(len(r) for r in batch.response_ids)


def _measure(name: str, start, prompt_ids, *, n: int, max_new_tokens: int) -> dict:
    t0 = time.perf_counter()
    engine = start()
    start_s = time.perf_counter() - t0
    warm_s, _ = _time_generate(engine, prompt_ids[:1], n=1, max_new_tokens=4)
    seconds, tokens = _time_generate(engine, prompt_ids, n=n, max_new_tokens=max_new_tokens)
    row = {
        "engine": name,
        "start_s": round(start_s, 1),
        "warmup_s": round(warm_s, 1),
        "generate_s": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--out", type=Path, default=RESULTS / "vllm_throughput")
    args = parser.parse_args()

    import torch
    import transformers
    import vllm

    from keel_server.platform.settings import Settings
    from keel_worker.engines.chat import encode_prompt
    from keel_worker.engines.hf import HFEngine
    from keel_worker.engines.models import load_model
    from keel_worker.engines.precision import bf16_is_native
    from keel_worker.engines.vllm import VLLMEngine, VLLMOptions

    precision = "bf16" if bf16_is_native() else "fp32"
    load_before = _uptime()
    workdir = Path(tempfile.mkdtemp(prefix="keel-vllm-bench-"))
    loaded = load_model("smollm2-135m-instruct", cache_dir=workdir / "models")
    prompt_ids = [
        encode_prompt(loaded.tokenizer, f"Write a short story about {TOPICS[i % 8]}.")
        for i in range(args.prompts)
    ]
    work = {"n": args.samples, "max_new_tokens": args.max_new_tokens}

    def start_hf():
        engine = HFEngine(loaded.model, loaded.tokenizer, precision=precision)
        engine.eos_ids = {-1}  # no token stops a response: exactly max_new_tokens each
        return engine

    def start_vllm():
        options = VLLMOptions.from_settings(Settings(vllm_kv_cache_gib=1.0, vllm_max_model_len=512))
        engine = VLLMEngine.from_model(
            loaded.model, loaded.tokenizer, precision=precision, workdir=workdir, options=options
        )
        # No token stops a response here either (the engine's SamplingParams, with ignore_eos).
        engine._vllm = SimpleNamespace(
            SamplingParams=functools.partial(vllm.SamplingParams, ignore_eos=True)
        )
        return engine

    rows = [
        _measure("hf", start_hf, prompt_ids, **work),
        _measure("vllm", start_vllm, prompt_ids, **work),
    ]
    result = {
        "work": {
            "model": "SmolLM2-135M-Instruct",
            "prompts": args.prompts,
            "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "eos": "ignored",
            "temperature": 1.0,
            "precision": precision,
        },
        "machine": {
            "cpu": _cpu_model(),
            "cores": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": bf16_is_native(),
            "uptime_before": load_before,
            "uptime_after": _uptime(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": vllm.__version__,
        },
        "results": rows,
        "vllm_over_hf": round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(result: dict) -> str:
    w, m = result["work"], result["machine"]
    lines = [
        "# Rollout throughput: vLLM (CPU backend) vs keel's hf engine",
        "",
        f"{w['model']}, {w['prompts']} prompts × {w['samples_per_prompt']} samples × "
        f"{w['max_new_tokens']} tokens (EOS ignored), T = 1, precision **{w['precision']}** "
        f"(bf16 native here: {m['bf16_native']}).",
        f"CPU: {m['cpu']} ({m['cpu_capability']}), torch threads {m['cores']}; "
        f"torch {result['versions']['torch']}, transformers {result['versions']['transformers']}, "
        f"vllm {result['versions']['vllm']}.",
        f"Load before: `{m['uptime_before']}`; after: `{m['uptime_after']}`.",
        "",
        "| engine | start s | warm-up s | generate s | tokens | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['engine']} | {r['start_s']} | {r['warmup_s']} | {r['generate_s']} | "
            f"{r['tokens']} | {r['tokens_per_s']} |"
        )
    lines += ["", f"vLLM / hf tokens/s: **{result['vllm_over_hf']}×**", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # vLLM may start processes that re-import this module
    main()
