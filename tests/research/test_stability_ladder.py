"""The mismatch ladder keeps what the stress suite promises.

`reruns.chosen_rungs` picks, by the rule declared before the ladder probe ran, the rungs of the
reruns from the committed probe (`stress/ladder.csv`). Here those rungs are measured again on a
small probe of the committed `balanced` cold start (64 prompts × 2 samples, one torch thread,
about 10 s a rung): every k3 rung must lie within `FACTOR` of its target and the routing rung's
worst-layer flip must reach 10 %, so a mechanism that stops rounding what it says (int4_kv_fp8
without its fp8 cache is int4: 1.8e-3 on this probe, 5× under its target; int4_router without
its quantized gates flips 9 %) or a rule that picks a rung the probe does not support fails
here. Checked by breaking each: the test failed.
"""

import functools
from pathlib import Path

import pytest
import torch

from research.stability import ladder, probe, reruns
from research.stability.suites import STRESS

ROOT = Path(__file__).resolve().parents[2]
COLD_START = ROOT / STRESS.results_dir / "coldstart" / f"balanced-{STRESS.sft.key()}"
# The small probe's k3 against the target: wider than the full probe's declared tolerance
# (10^0.25 ≈ 1.8) for the small probe's own sampling spread (128 responses, where the full probe
# has 256; on AMD EPYC AVX512 each chosen rung came out 1.5× under its target), narrow enough
# that the next mechanism down (int4 under the 1e-2 rung, 5×) fails.
FACTOR = 2.5
SMALL = {"prompts": 64, "n": 2, "max_new_tokens": STRESS.full.max_new_tokens}


@pytest.fixture(scope="module")
def committed():
    measured = reruns.read_probe(ROOT / STRESS.results_dir)
    return measured, reruns.chosen_rungs(measured)


@functools.cache
def _small_probe(name: str) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few seconds a rung; two threads on a shared 2-core box: minutes
    try:
        return probe.measure(STRESS, COLD_START, reruns._dial(name), **SMALL)
    finally:
        torch.set_num_threads(threads)


def test_the_committed_probe_reaches_every_target(committed):
    measured, rungs = committed
    assert None not in rungs.k3, rungs
    assert rungs.routing is not None
    assert measured[rungs.routing]["routing_layer_max"] >= reruns.ROUTING_TARGET


def test_every_chosen_k3_rung_lies_within_a_factor_of_its_target(committed):
    _, rungs = committed
    for target, name in zip(reruns.RUNG_TARGETS, rungs.k3, strict=True):
        k3 = _small_probe(name)["kl_k3"]
        assert target / FACTOR < k3 < target * FACTOR, (name, target, k3)


def test_the_routing_rung_flips_over_ten_percent_of_tokens_in_some_layer(committed):
    _, rungs = committed
    stats = _small_probe(rungs.routing)
    assert stats["routing_layer_max"] >= reruns.ROUTING_TARGET, stats["routing_layer_max"]


def test_the_ladder_command_writes_its_rows_and_names_the_rungs(tmp_path):
    """`ladder.run` end to end on a 2-prompt budget: a row per (init, dial) and the long slice,
    each with its CPU and budget, and a summary that applies the declared rule."""
    dials = (reruns._dial("fp32"), reruns._dial("int4_router"))
    rows = ladder.run(
        STRESS,
        out_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        workers=1,
        prompts=2,
        samples=1,
        inits=("balanced",),
        dials=dials,
    )
    assert [(r["init"], r["dial"]) for r in rows] == [
        ("balanced", "fp32"),
        ("balanced", "int4_router"),
        ("balanced@long", "fp32"),
        ("balanced@long", "int4_router"),
    ]
    assert all(r["prompts"] == 2 and r["n"] == 1 and r["cpu"] for r in rows)
    # Answers of the long slice are long (a cold start may stop a little short of the digits).
    assert min(r["response_len_mean"] for r in rows[2:]) > 0.75 * probe.LONG_MIN_DIGITS
    assert reruns.read_probe(tmp_path).keys() == {"fp32", "int4_router"}
    summary = (tmp_path / "ladder.md").read_text()
    assert "## Rungs kept by the declared rule" in summary and "## balanced@long" in summary
