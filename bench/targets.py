"""keel's speed targets against the committed results files: writes `bench/results/targets.md`.

Nothing is measured here. Each target reads the results file of the benchmark that measures it
and says what was measured, on which CPU (its name and vector ISA: the same product can be AVX2
or AVX-512, and the numbers differ between them), under what load, and whether the target is met.
A target whose file is missing says so. Run the benchmark named in a row to refresh it, then this:

    .venv/bin/python -m bench.targets
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.demo_time import cpu_kind

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "targets.md"

DEMO_WALL_S, DEMO_GAIN = 480, 0.2
DECODE_SHARE_OF_ROOF = 0.5
STEP_RATIO, TRAIN_SHARE_OF_PEAK, FP32_PEAK_RSS_GB = 0.25, 0.5, 6.0
POSTS_PER_S, POST_P99_MS = 1000, 50.0


@dataclass(frozen=True)
class Row:
    target: str
    goal: str
    measured: str
    met: bool | None  # None: no results file
    machine: str
    load: str
    source: str  # the results file and the command that writes it


def _load_of(uptime: str) -> str:
    """The 1-minute load average of an `uptime` line."""
    found = re.search(r"load average: ([0-9.]+)", uptime or "")
    return found[1] if found else "?"


def _read(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _missing(target: str, goal: str, source: str) -> Row:
    return Row(target, goal, "not measured", None, "", "", source)


def demo_rows() -> list[Row]:
    """One row per CPU kind with a `demo_<ISA>.json` (`bench/demo_time.py`), and the AVX2-kernel
    run of another CPU if there is one."""
    goal = f"≤ {DEMO_WALL_S / 60:.0f} min, held-out gain ≥ +{DEMO_GAIN}"
    names = sorted(p.name for p in RESULTS.glob("demo_*.json"))
    if not names:
        return [_missing("`make demo`", goal, "`demo_<ISA>.json` (`bench/demo_time.py`)")]
    rows = []
    for name in names:
        result = json.loads((RESULTS / name).read_text())
        kernels = name == "demo_avx2_kernels.json"  # this CPU on AVX2 kernels, not an AVX2 CPU
        kind = " on AVX2 kernels" if kernels else ""
        command = "bench/demo_time.py" + (" --isa avx2" if kernels else "")
        device = result["runtime"]["devices"][0]
        wall, gain = result["wall_seconds"], result["heldout_accuracy_gain"]
        measured = f"{wall / 60:.1f} min, gain {gain:+.2f}"
        cpu_bound = result.get("cpu_seconds_per_core")
        if cpu_bound is not None:
            measured += f" (CPU s / core {cpu_bound / 60:.1f} min)"
        rows.append(
            Row(
                f"`make demo`{kind}",
                goal,
                measured,
                wall <= DEMO_WALL_S and gain >= DEMO_GAIN,
                f"{device['name']} ({cpu_kind(device).upper()}{kind}), "
                f"{result['measured_at'][:10]}",
                f"{result['load_1min_before']} before, {result['load_1min_during_mean']} during",
                f"`{name}` (`{command}`)",
            )
        )
    return rows


def _step_time(name: str) -> tuple[dict | None, str, str]:
    result = _read(name)
    if result is None:
        return None, "", ""
    profile = result["device_profile"]
    machine = f"{profile['name']} ({cpu_kind(profile).upper()})"
    return result, machine, _load_of(result["keel"]["uptime_before"])


def step_rows() -> list[Row]:
    rows = []
    for name, precision in (("step_time.json", "fp32"), ("step_time_recommended.json", "bf16")):
        preset = "fp32" if precision == "fp32" else "recommended"
        source = f"`{name}` (`bench/step_time.py --preset {preset}`)"
        goal = f"≥ {DECODE_SHARE_OF_ROOF:.0%} of the compute roof"
        target = f"`hf` decode at 64 rows, {precision}"
        result, machine, load = _step_time(name)
        if result is None:
            rows.append(_missing(target, goal, source))
            continue
        limits = result["keel"]["limits"]
        share = limits["generate_share_of_roof"]
        measured = f"{share:.0%} ({limits['generate_tokens_per_s']:.0f} tokens/s)"
        rows.append(
            Row(target, goal, measured, share >= DECODE_SHARE_OF_ROOF, machine, load, source)
        )
    result, machine, load = _step_time("step_time_recommended.json")
    source = "`step_time_recommended.json` (`bench/step_time.py --preset recommended`)"
    if result is not None:
        ratio, share = result["ratio_step_time"], result["keel"]["limits"]["train_share_of_peak"]
        rows.append(
            Row(
                "recommended preset: keel / TRL step time",
                f"≤ {STEP_RATIO}",
                f"{ratio:.2f}",
                ratio <= STEP_RATIO,
                machine,
                load,
                source,
            )
        )
        rows.append(
            Row(
                "recommended preset: bf16 training",
                f"≥ {TRAIN_SHARE_OF_PEAK:.0%} of the bf16 GEMM peak",
                f"{share:.0%}",
                share >= TRAIN_SHARE_OF_PEAK,
                machine,
                load,
                source,
            )
        )
    result, machine, load = _step_time("step_time.json")
    if result is not None:
        rss = result["keel"]["peak_rss_gb"]
        rows.append(
            Row(
                "fp32 step: keel's peak RSS",
                f"≤ {FP32_PEAK_RSS_GB:.0f} GB",
                f"{rss:.2f} GB",
                rss <= FP32_PEAK_RSS_GB,
                machine,
                load,
                "`step_time.json` (`bench/step_time.py`)",
            )
        )
    return rows


def vllm_rows() -> list[Row]:
    source = "`vllm_throughput.json` (`bench/vllm_throughput.py`)"
    result = _read("vllm_throughput.json")
    if result is None:
        return [_missing("`vllm` CPU engine beside `hf`", "measured on the same work", source)]
    by_engine = {r["engine"]: r for r in result["results"]}
    machine = result["machine"]
    measured = ", ".join(f"{e} {r['tokens_per_s']} tokens/s" for e, r in by_engine.items())
    return [
        Row(
            "`vllm` CPU engine beside `hf`",
            "measured on the same work",
            f"{measured} ({result['work']['precision']})",
            True,
            f"{machine['cpu']} ({machine['cpu_capability']})",
            _load_of(machine["uptime_before"]),
            source,
        )
    ]


def ingest_rows() -> list[Row]:
    target, goal = "reward posts, PostgreSQL", f"≥ {POSTS_PER_S} /s at p99 < {POST_P99_MS:.0f} ms"
    source = "`reward_ingest_postgres.json` (`bench/reward_ingest.py --db postgres`)"
    result = _read("reward_ingest_postgres.json")
    if result is None:
        return [_missing(target, goal, source)]
    best: tuple[float, int, float] = (0.0, 0, 0.0)  # posts/s, API processes, p99
    for server in result["servers"]:
        for point in server["points"]:
            if point["p99_ms"] < POST_P99_MS and point["requests_per_s"] > best[0]:
                best = (point["requests_per_s"], server["server_workers"], point["p99_ms"])
    measured = (
        f"{best[0]:.0f} /s at p99 {best[2]:.0f} ms ({best[1]} API process"
        f"{'es' if best[1] != 1 else ''}); "
        f"{result['cpu_ms_per_post']} ms CPU per post"
    )
    machine = result["machine"]
    load = f"{machine['load_average_before'][0]} before"
    return [
        Row(
            target,
            goal,
            measured,
            best[0] >= POSTS_PER_S,
            f"{machine['cpu']}, {machine['cores']} cores",
            load,
            source,
        )
    ]


SECTIONS: list[Callable[[], list[Row]]] = [demo_rows, step_rows, vllm_rows, ingest_rows]


def newest_kind() -> str | None:
    """The CPU kind (`demo_time.cpu_kind`) of the newest native demo run: what the newest
    results ran on."""
    runs = [json.loads(p.read_text()) for p in RESULTS.glob("demo_*.json")]
    native = [r for r in runs if r.get("kernel_isa", "native") == "native"]
    if not native:
        return None
    return cpu_kind(max(native, key=lambda r: r["measured_at"])["runtime"]["devices"][0]).upper()


def render(rows: list[Row], newest: str | None = None) -> str:
    """The page; a row measured on another CPU kind than `newest` is marked stale for it."""
    verdict = {True: "met", False: "**not met**", None: "not measured"}
    lines = [
        "# Speed targets",
        "",
        "`bench/targets.py` writes this page from the committed results files (it measures",
        "nothing). The load is the machine's 1-minute load average when the row was measured:",
        "on these 2-core machines, a load above 2 means other work shared the cores.",
        f"The newest demo ran on {newest or 'no CPU yet'}; a row measured on another CPU kind is",
        "marked *stale* (it holds for its own kind, and was not rerun on the newest).",
        "",
        "| target | goal | measured | | CPU | load | results (command) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = re.search(r"\((AVX512|AVX2|AMX)\b", r.machine)
        machine = f"{r.machine}, *stale*" if newest and kind and kind[1] != newest else r.machine
        cells = [r.target, r.goal, r.measured, verdict[r.met], machine, r.load, r.source]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def page() -> str:
    return render([row for section in SECTIONS for row in section()], newest_kind())


def main() -> int:
    OUT.write_text(page())
    print(f"wrote {OUT.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
