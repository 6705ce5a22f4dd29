"""Time `make demo` as a user runs it and write `bench/results/demo_<CPU ISA>.json`.

Runs `scripts/demo.py` (its defaults, or the arguments given after `--`) as a subprocess and
records its wall time from start to exit (install and the one-time model conversion excluded:
run the demo once before), the held-out accuracy before and after and the train reward from the
demo's `summary.json`, the worker's compute choice (`job.runtime`: the CPU, its measured GEMM
rates, the dtype the bf16 rollouts ran in), and the machine's load: the 1-minute load average
before the start (other users of the machine) and sampled every 5 s during the run (which
includes the demo's own threads, about 2 on a 2-core machine), with the CPU seconds its
processes used (sampled from /proc: on a loaded machine, CPU seconds over cores bound the idle
wall time).

It also records where the job's time went (`phase_seconds`: generation, π_old recompute, the
updates, sync, and `outside_steps` = model load + the held-out evaluations), and, with
`--isa avx2`, runs the demo on torch's AVX2 kernels (`ATEN_CPU_CAPABILITY=avx2`,
`ONEDNN_MAX_CPU_ISA=AVX2`: bf16 then runs emulated, as on an AVX2-only CPU) so any machine can
show where an AVX2 machine's time goes; that result goes to `demo_avx2_kernels.json` and says
it is this CPU on AVX2 kernels, not an AVX2 CPU. A native run's file is named after the vector
ISA the worker measured (`demo_avx2.json`, `demo_avx512.json`, `demo_amx.json`): the same demo
differs by 2× and more between them, so each CPU kind keeps its own result.

    python bench/demo_time.py [--isa avx2] [-- --steps 4 ...]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# The kernel ISA torch and oneDNN may use: "native" (what the CPU has) or "avx2".
ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
KERNELS_RESULT = "demo_avx2_kernels.json"
SAMPLE_S = 5.0


def load_1min() -> float:
    return os.getloadavg()[0]


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def descendants_cpu_s(root: int) -> dict[int, float]:
    """user + system CPU seconds of every live descendant of `root`, from /proc."""
    tick, children = os.sysconf("SC_CLK_TCK"), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu_s = (int(fields[11]) + int(fields[12])) / tick
        children.setdefault(int(fields[1]), []).append((int(entry.name), cpu_s))
    found, todo = {}, [root]
    while todo:
        for pid, cpu_s in children.get(todo.pop(), []):
            found[pid] = cpu_s
            todo.append(pid)
    return found


def newest_summary(after: float) -> dict:
    summaries = [
        p for p in (REPO / ".keel" / "demo").glob("*/summary.json") if p.stat().st_mtime >= after
    ]
    if not summaries:
        raise SystemExit("the demo wrote no summary.json")
    return json.loads(max(summaries, key=lambda p: p.stat().st_mtime).read_text())


def cpu_kind(device: dict) -> str:
    """The kind of a run's CPU (`job.runtime`'s device), which names a native run's file: `amx`
    where the CPU has AMX bf16 tiles (torch calls such a CPU AVX512 too, but its bf16 runs
    several times faster), else torch's vector ISA (`avx2`, `avx512`)."""
    return "amx" if "amx_bf16" in device.get("bf16_support", ()) else device["capability"].lower()


def main(argv: list[str]) -> int:
    demo_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    isa = own[own.index("--isa") + 1] if "--isa" in own else "native"
    if isa not in ISA_ENV:
        raise SystemExit(f"--isa is one of {sorted(ISA_ENV)}, not {isa!r}")
    samples: list[float] = []
    cpu_s: dict[int, float] = {}  # per process: the most seen (a process's CPU only grows)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            samples.append(load_1min())
            for pid, seconds in descendants_cpu_s(os.getpid()).items():
                cpu_s[pid] = max(seconds, cpu_s.get(pid, 0.0))

    before = load_1min()
    started_at, started = time.time(), time.monotonic()
    threading.Thread(target=sample, daemon=True).start()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), *demo_args],
        cwd=REPO,
        check=False,
        env={**os.environ, **ISA_ENV[isa]},  # the demo's `keel up` and worker inherit it
    )
    wall_s = time.monotonic() - started
    done.set()
    total_cpu_s = sum(cpu_s.values())  # to the last sample: up to SAMPLE_S short
    if proc.returncode != 0:
        raise SystemExit(f"the demo exited with {proc.returncode}")
    summary = newest_summary(started_at)
    before_acc, after_acc = summary["heldout_accuracy_before"], summary["heldout_accuracy_after"]
    result = {
        "command": " ".join(["scripts/demo.py", *demo_args]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel_isa": isa,
        "wall_seconds": round(wall_s, 1),
        "job_seconds": round(summary["job_seconds"], 1),
        "target_wall_seconds": 480,
        "heldout_accuracy_before": before_acc,
        "heldout_accuracy_after": after_acc,
        "heldout_accuracy_gain": round(after_acc - before_acc, 4),
        "train_reward_first": summary["train_reward_first"],
        "train_reward_last": summary["train_reward_last"],
        # On a loaded machine the wall time says little; the CPU seconds of the demo's processes
        # (API, worker, demo script) over the cores bound what an idle machine would take.
        "cpu_seconds": round(total_cpu_s, 1),
        "cpu_seconds_per_core": round(total_cpu_s / (os.cpu_count() or 1), 1),
        "load_1min_before": round(before, 2),
        "load_1min_during_mean": round(sum(samples) / len(samples), 2) if samples else None,
        "load_1min_during_max": round(max(samples), 2) if samples else None,
        "phase_seconds": summary["phase_seconds"],
        "runtime": summary["runtime"],
        "config": summary["config"],
        "job_id": summary["job_id"],
    }
    device = summary["runtime"]["devices"][0]
    result_path = RESULTS / (KERNELS_RESULT if isa == "avx2" else f"demo_{cpu_kind(device)}.json")
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"wrote {result_path.relative_to(REPO)}: {wall_s / 60:.1f} min, accuracy "
        f"{before_acc:.2f} -> {after_acc:.2f}, load {before:.1f} before / "
        f"{result['load_1min_during_mean']} during; phases {result['phase_seconds']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
