"""The reruns' verdicts (`research.stability.reruns_verdicts`) on hand-made run summaries: a part
is judged only when complete and of one CPU kind, each by its declared rule."""

from research.stability import fidelity, reruns, reruns_verdicts

PROBE = {
    "fp32": {"kl_k3": 0.0, "routing_layer_max": 0.0},
    "int4_router": {"kl_k3": 3.3e-3, "routing_layer_max": 0.23},
    "int4_kv_fp8": {"kl_k3": 7.1e-3, "routing_layer_max": 0.08},
    "int3": {"kl_k3": 2.1e-2, "routing_layer_max": 0.16},
}
PARTS = reruns_verdicts.pieces_by_part(PROBE)
AMX, AVX2 = "Intel Xeon (AMX)", "AMD EPYC (AVX2)"


def rows_for(part: str, finals: dict[str, float], *, cpu=AMX, k3=2e-2, collapsed=()):
    """One summary per (cell, seed) of `part`'s pieces; a cell's seeds end at `finals[cell]`
    (default 0.30) plus a small seed spread."""
    out = []
    for piece in PARTS[part]:
        for cell in piece.cells:
            for seed in piece.seeds:
                out.append(
                    {
                        "cell": cell.name,
                        "seed": seed,
                        "final_acc": finals.get(cell.name, 0.30) + 0.005 * seed,
                        "collapsed": int(cell.name in collapsed),
                        "initial_acc": 0.2,
                        "mean_kl_k3": k3,
                        "max_layer_routing_infer_vs_train": 0.2,
                        "max_layer_routing_old_vs_current": 0.2,
                        "eval_n": 512,
                        "precision": cell.precision,
                        "cpu": cpu,
                    }
                )
    return out


def judge(part, rows):
    return reruns_verdicts.judge_part(part, PARTS[part], rows)


def test_split_parts_pool_their_pieces_under_one_name():
    assert [p.name for p in PARTS["f9-rung3"]] == ["f9-rung3-s1", "f9-rung3-s2"]
    assert sorted(s for p in PARTS["f9-rung3"] for s in p.seeds) == list(reruns.SEEDS)
    assert reruns_verdicts.base_name("long-512-s2") == "long-512"
    assert reruns_verdicts.base_name("f6-long-heavy") == "f6-long-heavy"


def test_an_incomplete_part_shows_its_count_and_no_accuracy():
    rows = rows_for("f1-rung3", {"N1/minirl": 0.6, "N1/reinforce": 0.1})
    result = judge("f1-rung3", rows[:-1])
    assert result.verdict == reruns_verdicts.NOT_JUDGED
    assert (result.done, result.expected) == (7, 8)
    assert result.lines == ("7 of 8 runs in",)
    assert judge("f1-rung3", rows).verdict == "agrees"


def test_runs_of_two_cpu_kinds_are_never_pooled():
    rows = rows_for("f9-rung3", {})
    mixed = [{**r, "cpu": AVX2} if i % 2 else r for i, r in enumerate(rows)]
    result = judge("f9-rung3", mixed)
    assert result.verdict == reruns_verdicts.NOT_JUDGED
    assert result.cpus == (AVX2, AMX)
    assert judge("f9-rung3", rows).verdict != reruns_verdicts.NOT_JUDGED


def test_f1_keeps_its_mechanism_gate():
    apart = {"N1/minirl": 0.6, "N1/reinforce": 0.1}
    assert judge("f1-rung2", rows_for("f1-rung2", apart, k3=7e-3)).verdict == fidelity.UNTESTABLE
    assert judge("f1-rung2", rows_for("f1-rung2", apart, k3=1.2e-2)).verdict == "agrees"


def test_f9_is_judged_on_the_parts_own_rungs():
    # DPPO-TV and MiniRL-μ beat MiniRL at int3 only: the stress suite's first rule says agrees.
    finals = {"F9/int3/minirl": 0.10, "F9/int3/minirl-mu": 0.40, "F9/int3/dppo_tv": 0.40}
    result = judge("f9-rung3", rows_for("f9-rung3", finals))
    assert result.verdict == "agrees"
    assert any("F9/int3/dppo_tv" in line for line in result.lines)


def test_the_lr_control_reads_f4a_by_its_declared_rule():
    clipping_matters = {"N4/minirl+R2-noclip": 0.1, "N4/minirl-noclip": 0.1}
    result = judge("lr-control-n4", rows_for("lr-control-n4", clipping_matters))
    assert result.verdict.startswith("F4a agrees")
    assert "apart from the lr shock" in result.verdict
    tie = judge("lr-control-n4", rows_for("lr-control-n4", {}))
    assert tie.verdict.startswith("F4a not reproduced") and "the lr shock's" in tie.verdict


def test_long_heavy_reads_which_explains_the_fall():
    dial = f"cold/long_heavy/{reruns.REGIME_DIAL.name}"
    mismatch = judge("f6-long-heavy", rows_for("f6-long-heavy", {dial: 0.1}))
    assert mismatch.verdict == "the mismatch explains long_heavy's fall"
    assert judge("f6-long-heavy", rows_for("f6-long-heavy", {})).verdict.startswith(
        "the cold start"
    )
    above = judge("f6-long-heavy", rows_for("f6-long-heavy", {dial: 0.6}))
    assert above.verdict.startswith("neither")


def test_long_runs_count_collapses_and_a_majority_collapse_decides():
    rows = rows_for("long-512", {}, collapsed=("N4/minirl-noclip",))
    result = judge("long-512", rows)
    assert result.verdict == "agrees"
    assert "`N4/minirl-noclip` 2/2" in result.lines[-1]


def test_the_map_is_reported_per_algorithm_not_judged():
    result = judge("map-n2-rung3", rows_for("map-n2-rung3", {"map/int3/N2/grpo": 0.1}))
    assert result.verdict == reruns_verdicts.REPORTED
    effects = [line for line in result.lines if " − `map/fp32/N2/" in line]
    assert len(effects) == len(reruns.MAP_ALGORITHMS)
    assert any(line.startswith("`map/int3/N2/grpo`") and "Δ -0.200" in line for line in effects)


def test_the_map_runs_in_blocks_of_one_seed_read_across_cpu_kinds():
    pieces = PARTS["map-n2-rung3"]
    assert [(p.name, p.seeds) for p in pieces] == [
        (f"map-n2-rung3-s{s + 1}", (s,)) for s in reruns.SEEDS
    ]
    cells = {c.name for c in pieces[0].cells}
    assert all(f"map/{d}/N2/{a}" in cells for d in ("fp32", "int3") for a in reruns.MAP_ALGORITHMS)
    rows = rows_for("map-n2-rung3", {"map/int3/N2/grpo": 0.1})
    mixed = [{**r, "cpu": AVX2} if r["seed"] % 2 else r for r in rows]
    result = judge("map-n2-rung3", mixed)
    assert result.verdict == reruns_verdicts.REPORTED and result.cpus == (AVX2, AMX)
    assert result.lines[-1] == (
        f"CPU kind per seed (the blocks): seed 0: {AMX}; seed 1: {AVX2}; seed 2: {AMX}; "
        f"seed 3: {AVX2}"
    )
    # Every other part still needs one kind.
    f1 = [{**r, "cpu": AVX2} if r["seed"] % 2 else r for r in rows_for("f1-rung3", {})]
    assert judge("f1-rung3", f1).verdict == reruns_verdicts.NOT_JUDGED


def test_a_part_without_its_rung_is_cut():
    probe = {k: v for k, v in PROBE.items() if k != "int3"}
    parts = reruns_verdicts.pieces_by_part(probe)
    result = reruns_verdicts.judge_part("f1-rung3", parts["f1-rung3"], [])
    assert result.verdict == reruns_verdicts.CUT and result.lines == ("rung not reached",)
    gated = reruns_verdicts.judge_part("f9-rung1", PARTS["f9-rung1"], [])
    assert gated.verdict == reruns_verdicts.CUT and gated.lines == ("k3 0.0033, under the gate",)
