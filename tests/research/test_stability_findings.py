"""The pre-declared agree / disagree rules of the findings, on hand-made run summaries."""

from research.stability.findings import better, evaluate_findings


def runs(cell, finals, collapsed=(0, 0, 0)):
    return [
        {
            "cell": cell,
            "final_acc": f,
            "collapsed": c,
            "initial_acc": 0.2,
            "mean_kl_k1": 1e-3,
            "mean_routing_infer_vs_train": 0.02,
            "kl_start": 1e-3,
            "kl_end": 1e-3 + 0.1 * c,
        }
        for f, c in zip(finals, collapsed, strict=True)
    ]


def test_better_uses_accuracy_first_then_majority_collapse():
    rows = {
        "A": runs("A", [0.5, 0.52, 0.48]),
        "B": runs("B", [0.3, 0.31, 0.29]),
        # Same accuracy as C, but collapsed in 2 of 3 seeds while C never did.
        "C": runs("C", [0.30, 0.30, 0.31]),
        "D": runs("D", [0.30, 0.29, 0.30], collapsed=(1, 1, 0)),
    }
    assert better(rows, "A", "B") == 1 and better(rows, "B", "A") == -1
    assert better(rows, "C", "D") == 1 and better(rows, "D", "C") == -1
    assert better(rows, "B", "C") == 0


def test_on_policy_is_finding_verdicts():
    agree = runs("N1/minirl", [0.4, 0.42, 0.41]) + runs("N1/reinforce", [0.1, 0.12, 0.09])
    by_key = {f.key: f for f in evaluate_findings(agree)}
    assert by_key["F1"].verdict == "agrees"
    assert by_key["F2"].verdict == "missing"  # no length-norm runs
    flipped = runs("N1/minirl", [0.1, 0.12, 0.09]) + runs("N1/reinforce", [0.4, 0.42, 0.41])
    assert {f.key: f for f in evaluate_findings(flipped)}["F1"].verdict == "disagrees"
    same = runs("N1/minirl", [0.4, 0.42, 0.41]) + runs("N1/reinforce", [0.41, 0.4, 0.42])
    assert {f.key: f for f in evaluate_findings(same)}["F1"].verdict == "not reproduced"


def test_cold_start_finding_needs_every_pair_indistinguishable():
    cells = ("N2/minirl+R2", "cold/short_heavy", "cold/long_heavy")
    close = [r for c in cells for r in runs(c, [0.40, 0.42, 0.41])]
    assert {f.key: f for f in evaluate_findings(close)}["F6"].verdict == "agrees"
    apart = close[:6] + runs(cells[2], [0.2, 0.21, 0.2])
    finding = {f.key: f for f in evaluate_findings(apart)}["F6"]
    assert finding.verdict == "disagrees"
    assert "pairs with a significant final difference: 2 of 3" in finding.lines


def test_kl_finding_contrasts_collapsed_with_stable_runs():
    # Collapsed runs end 0.1 above their starting KL, stable ones unchanged → agrees.
    rows = runs("N1/minirl", [0.4, 0.42, 0.41]) + runs("N1/reinforce", [0.1, 0.1, 0.1], (1, 1, 1))
    finding = {f.key: f for f in evaluate_findings(rows)}["F8"]
    assert finding.verdict == "agrees"
    assert finding.lines[0].startswith("3 collapsed runs")
    # A cell that reuses another's runs (the stress suite's aliases) does not count them twice.
    aliased = evaluate_findings(rows, aliases={"auto/N1/minirl+none": "N1/minirl"})
    assert {f.key: f for f in aliased}["F8"].lines[1].startswith("3 stable runs")


def test_a_missing_number_is_missing_never_agrees_or_disagrees():
    nan = float("nan")
    rows = (
        runs("N1/minirl", [0.4, 0.42, 0.41])
        + runs("N1/minirl+R3", [0.4, 0.41, 0.4])
        + runs("N1/reinforce+R3", [0.1, 0.1, 0.1])
    )
    for r in rows:
        r["mean_kl_k1"] = nan
    assert {f.key: f for f in evaluate_findings(rows)}["F3"].verdict == "missing"
    off = []
    for cell in ("minirl-noclip", "minirl+R2-noclip", "minirl+R2", "minirl+R3"):
        off += runs(f"N2/{cell}", [nan, nan, nan])
    f4 = {f.key: f for f in evaluate_findings(off)}["F4"]
    assert f4.verdict == "missing" and "no finite final accuracy" in " ".join(f4.lines)


def test_dppo_critique_verdicts_and_aliases():
    from research.stability.findings import F9_RUNGS, dppo_critique

    def cells(mini, mu, dppo):
        out = []
        for rung in F9_RUNGS:
            out += runs(f"F9/{rung}/minirl", mini) + runs(f"F9/{rung}/minirl-mu", mu)
            out += runs(f"F9/{rung}/dppo_tv", dppo)
        return out

    low, high = [0.1, 0.12, 0.11], [0.4, 0.42, 0.41]
    agree = evaluate_findings(cells(low, high, high), findings=(dppo_critique,))
    assert agree[0].verdict == "agrees"
    assert (
        evaluate_findings(cells(high, low, low), findings=(dppo_critique,))[0].verdict
        == "disagrees"
    )
    assert (
        evaluate_findings(cells(high, high, high), findings=(dppo_critique,))[0].verdict
        == "not reproduced"
    )
    # The int4 MiniRL cell is the findings cell N4/minirl+R3 under another name.
    rows = [r for r in cells(low, high, high) if r["cell"] != "F9/int4/minirl"]
    rows += runs("N4/minirl+R3", low)
    missing = evaluate_findings(rows, findings=(dppo_critique,))[0]
    assert missing.verdict == "missing"
    aliased = evaluate_findings(
        rows, aliases={"F9/int4/minirl": "N4/minirl+R3"}, findings=(dppo_critique,)
    )
    assert aliased[0].verdict == "agrees"


def test_one_seed_per_cell_is_missing_not_a_tie():
    lone = runs("N1/minirl", [0.4], collapsed=(0,)) + runs("N1/reinforce", [0.1], collapsed=(0,))
    f1 = {f.key: f for f in evaluate_findings(lone)}["F1"]
    assert f1.verdict == "missing" and "fewer than 2 runs" in f1.lines[0]
