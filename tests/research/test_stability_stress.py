"""The stress suite's pieces without training: the sorting task, the regime rules on hand-made
pilot runs (they must pick what the declared rule says, from baselines only), and the matrix's
deduplication of the stability map against the findings cells."""

import json
import re
from itertools import islice
from pathlib import Path
from statistics import fmean

import pytest

from research.stability import report_stress, sorting, stress
from research.stability.matrix import Budget, select
from research.stability.results import Run
from research.stability.suites import LADDER


def test_sorting_answers_are_long_with_a_tail_and_splits_are_disjoint():
    pool = sorting.rl_pool()
    lengths = [len(p.answer) + 1 for p in pool]  # + EOS: what the policy generates
    assert fmean(lengths) >= 32 and sum(n >= 96 for n in lengths) >= 40
    assert max(lengths) <= sorting.MAX_NEW_TOKENS
    held = set(sorting.held_out())
    assert len(pool) == len(set(pool)) == 4096 and not held & set(pool)
    short = list(islice(sorting.sft_stream(sorting.COLD_START_MIXTURES[1]), 500))
    assert not held & set(short) and max(len(p.digits) for p in short) <= 40


def test_sorting_prompt_answer_and_reward():
    p = sorting.Problem("93150")
    assert (p.prompt, p.answer) == ("93150=", "01359")
    assert sorting.score("01359", "01359 ") == 1.0
    assert sorting.score("01359", "0135") == 0.0  # one missing digit fails the whole answer


def _run(cell: str, acc: list[float]) -> Run:
    """A pilot run whose held-out accuracy follows `acc` (entropy and health unremarkable)."""
    rows = [
        {"grad_step": float(8 * i), "eval_acc": a, "entropy": 1.0, "loss": 0.1, "grad_norm": 1.0}
        for i, a in enumerate(acc)
    ]
    return Run({"cell": cell, "regime": "pilot", "seed": 0}, rows)


LEARNS = [0.2, 0.25, 0.3, 0.35, 0.4]
FLAT = [0.3, 0.3, 0.3, 0.3, 0.3]
COLLAPSES = [0.3, 0.4, 0.1, 0.05, 0.02]


def test_rule_a_takes_the_largest_lr_at_which_reinforce_still_learns():
    cells = stress.pilot_a_cells()
    runs = {
        c.name: _run(c.name, acc)
        for c, acc in zip(cells, [LEARNS, LEARNS, LEARNS, FLAT], strict=True)
    }
    lr, evidence = stress.rule_a(runs)
    assert lr == stress.LR_GRID[2] and len(evidence) == len(cells)
    nothing = {c.name: _run(c.name, FLAT) for c in cells}
    assert stress.rule_a(nothing)[0] == min(stress.LR_GRID)


def test_rule_b_takes_the_mildest_rung_that_collapses_reinforce():
    cells = stress.pilot_b_cells(3e-4)
    assert [c.precision for c in cells] == [d.precision for d in LADDER]
    runs = {
        c.name: _run(c.name, acc)
        for c, acc in zip(cells, [LEARNS, COLLAPSES, COLLAPSES], strict=True)
    }
    dial, collapsed, _ = stress.rule_b(runs, 3e-4)
    assert (dial, collapsed) == (LADDER[1], True)
    calm = {c.name: _run(c.name, LEARNS) for c in cells}
    assert stress.rule_b(calm, 3e-4)[:2] == (LADDER[-1], False)


def test_rule_c_takes_the_smallest_lr_at_or_above_rule_a_that_collapses_noclip():
    cells = stress.pilot_c_cells(3e-4, LADDER[1])
    assert [c.lr for c in cells] == [lr for lr in stress.LR_GRID if lr >= 3e-4]
    assert all(
        c.algorithm == {"name": "minirl", "use_clip": False}
        and c.replay == "none"
        and c.num_minibatches == 4
        for c in cells
    )
    runs = {
        c.name: _run(c.name, acc)
        for c, acc in zip(cells, [LEARNS, COLLAPSES, COLLAPSES], strict=True)
    }
    assert stress.rule_c(runs, 3e-4, LADDER[1])[:2] == (1e-3, True)
    missing = {cells[0].name: _run(cells[0].name, LEARNS)}
    assert stress.rule_c(missing, 3e-4, LADDER[1])[:2] == (max(stress.LR_GRID), False)


@pytest.fixture
def regime() -> stress.Regime:
    return stress.Regime(
        lr_on_policy=3e-4,
        dial="int4",
        lr_off_policy=1e-3,
        baseline_collapsed={"B": True, "C": True},
        evidence={},
    )


def test_matrix_runs_each_configuration_once(regime):
    cells, aliases = stress.matrix_cells(regime)
    keys = [stress.config_key(c) for c in cells]
    assert len(keys) == len(set(keys))
    # The map's int4 MiniRL cells are the findings cells themselves.
    assert aliases["map/int4/N1/minirl"] == "N1/minirl"
    assert aliases["map/int4/N4/minirl"] == "N4/minirl+R3"
    assert aliases["F9/int4/minirl"] == "N4/minirl+R3"
    by_name = {c.name: c for c in cells}
    assert by_name["N1/reinforce"].lr == 3e-4 and by_name["N2/minirl+R2"].lr == 1e-3
    assert all(c.precision == "int4" and c.top_p == 1.0 for c in stress.findings_cells(regime))
    assert by_name["map/int4+top_p0.9/N8/dppo_tv"].top_p == 0.9
    assert not any(c.name.startswith("map/") and "/N2/" in c.name for c in cells)
    assert by_name["F9/int4+top_p0.9/minirl-mu"].algorithm["clip_anchor"] == "mu_old"
    assert not any("fp8_tensor" in c.name for c in cells)  # the cut: not a map rung
    assert not any(c.name.startswith("bf16/") for c in cells)


def test_a_cell_filter_ending_in_dollar_keeps_that_cell_alone(regime):
    cells, _ = stress.matrix_cells(regime)
    names = {c.name for c in select(cells, Budget(cells=("N1/minirl$", "auto/N2/")))}
    assert "N1/minirl" in names and "auto/N2/minirl+auto" in names
    assert not any(n.startswith("N1/minirl+") for n in names)  # a substring would keep them


def test_regime_round_trips(regime, tmp_path):
    regime.save(tmp_path / "regime.json")
    assert stress.Regime.load(tmp_path / "regime.json") == regime
    assert regime.dial_setting == LADDER[1]


def test_auto_is_declared_against_every_fixed_choice_at_each_n(regime):
    cells, aliases = stress.matrix_cells(regime)
    by_name = {c.name: c for c in cells}
    for n in (1, 2, 4, 8):
        auto = by_name[f"auto/N{n}/minirl+auto"]  # its own run at every N
        assert (auto.replay, auto.num_minibatches) == ("auto", n)
        assert auto.algorithm == {"name": "minirl"}
        assert auto.lr == (3e-4 if n == 1 else 1e-3) and auto.precision == "int4"
    # The fixed choices are the findings' runs where those exist; R2 is no choice at N = 1.
    assert aliases["auto/N1/minirl+none"] == "N1/minirl"
    assert aliases["auto/N1/minirl+R3"] == "N1/minirl+R3"
    assert "auto/N1/minirl+R2" not in aliases and "auto/N1/minirl+R2" not in by_name
    for n in (2, 4, 8):
        assert aliases[f"auto/N{n}/minirl+R2"] == f"N{n}/minirl+R2"
        assert aliases[f"auto/N{n}/minirl+R3"] == f"N{n}/minirl+R3"
        assert by_name[f"auto/N{n}/minirl+none"].algorithm == {"name": "minirl"}  # clip, no replay
    assert len([c for c in cells if c.name.startswith("auto/")]) == 7


def _summaries(cell: str, finals: list[float], collapsed: int = 0) -> list[dict]:
    return [
        {"cell": cell, "final_acc": f, "collapsed": int(i < collapsed)}
        for i, f in enumerate(finals)
    ]


def _verdict(auto: list[float], none: list[float], r3: list[float], collapsed: int = 0):
    rows = {
        "a": _summaries("a", auto),
        "none": _summaries("none", none),
        "r3": _summaries("r3", r3, collapsed),
    }
    return report_stress.auto_verdict(rows, "a", ["none", "r3"])


def test_auto_verdict_follows_the_findings_comparison():
    # Within noise of the best fixed choice (R3 here): |0.40 − 0.42| < 0.03.
    assert _verdict([0.40, 0.41, 0.39], [0.30, 0.31, 0.29], [0.42, 0.41, 0.43]) == (
        "r3",
        "within noise",
    )
    # Beaten by a fixed choice beyond max(0.03, 2 SE): worse, naming it.
    assert _verdict([0.30, 0.31, 0.29], [0.20, 0.21, 0.19], [0.42, 0.41, 0.43]) == (
        "r3",
        "worse than `r3`",
    )
    assert _verdict([0.50, 0.51, 0.49], [0.20, 0.21, 0.19], [0.42, 0.41, 0.43])[1] == "better"
    # A lone seed anywhere is missing, not a tie.
    assert _verdict([0.50], [0.20, 0.21], [0.42, 0.41]) == ("", "missing")


def test_runs_from_another_cold_start_are_never_mixed_with_new_ones(tmp_path):
    from research.stability.orchestrate import _refuse_mixed_cold_starts

    run = tmp_path / "runs" / "N4__minirl"
    run.mkdir(parents=True)
    (run / "seed0.json").write_text(json.dumps({"cell": "N4/minirl", "init": "balanced"}))
    known = [{"name": "balanced", "weights_sha256": "a" * 64, "cpu": "EPYC (AVX2)"}]
    same = [{"name": "balanced", "weights_sha256": "a" * 64, "steps": 900}]
    other = [{"name": "balanced", "weights_sha256": "b" * 64, "steps": 800, "cpu": "EPYC (AVX512)"}]
    _refuse_mixed_cold_starts(tmp_path, known, same)  # same weights: go on
    _refuse_mixed_cold_starts(tmp_path, [], other)  # nothing recorded yet: go on
    with pytest.raises(
        SystemExit,
        match=r"1 runs .* start from cold start 'balanced'.*made on "
        r"EPYC \(AVX2\).*on EPYC \(AVX512\)",
    ):
        _refuse_mixed_cold_starts(tmp_path, known, other)
    (run / "seed0.json").unlink()  # moved aside: the new cold start may run
    _refuse_mixed_cold_starts(tmp_path, known, other)


def test_every_figure_the_committed_report_shows_is_a_committed_file():
    """The stress section sits in the gentle suite's REPORT.md one directory above its own
    figures: its image links must start from the report, not from `stress/`."""
    report = Path(__file__).resolve().parents[2] / "research" / "results" / "stability"
    report = report / "REPORT.md"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert any(link.startswith("stress/") for link in links)  # the stress suite's own figures
    assert [link for link in links if not (report.parent / link).is_file()] == []
