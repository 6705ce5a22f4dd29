"""The fidelity reruns (`research.stability.reruns`): the rung rule, the parts' sizes, their
cells."""

from pathlib import Path

from research.stability import reruns
from research.stability.matrix import training_config


def _probe(k3: dict[str, float], flip: dict[str, float] | None = None) -> reruns.Probe:
    flip = flip or {}
    return {d: {"kl_k3": v, "routing_layer_max": flip.get(d, 0.05)} for d, v in k3.items()}


LADDER_K3 = _probe({"fp32": 0.0, "fp8_tensor": 5.6e-4, "int4": 2.0e-3, "int4+top_p0.9": 1.6e-3})


def test_a_rung_counts_for_the_target_it_is_nearest_to_and_only_within_the_tolerance():
    assert reruns.rung_for(3e-3, LADDER_K3) == "int4"  # 1.5× off
    assert reruns.rung_for(1e-2, LADDER_K3) is None  # 5× off: not reached
    assert reruns.rung_for(3e-2, LADDER_K3 | _probe({"int4": 2.5e-2})) == "int4"
    assert reruns.rung_for(3e-3, _probe({"fp32": 0.0})) is None
    # The serving mechanisms are candidates too; a dial outside the candidates (fp32) never is.
    assert reruns.rung_for(1e-2, LADDER_K3 | _probe({"int3": 8e-3, "fp32": 1e-2})) == "int3"


def test_the_routing_rung_is_the_least_k3_candidate_over_ten_percent():
    flips = {"int4": 0.09, "int4_router": 0.30, "int4_kv_fp8": 0.12, "fp32": 0.5}
    probe = _probe({"fp32": 0.0, "int4": 2e-3, "int4_router": 9e-3, "int4_kv_fp8": 5e-3}, flips)
    assert reruns.routing_rung(probe) == "int4_kv_fp8"
    assert reruns.routing_rung(LADDER_K3) is None  # 5 % everywhere: not reached
    rungs = reruns.chosen_rungs(probe)
    assert rungs.k3 == ("int4", "int4_router", None) and rungs.routing == "int4_kv_fp8"


def test_the_probe_files_merge_with_the_later_one_winning(tmp_path: Path):
    header = "init,dial,kl_k3,routing_layer_max\n"
    (tmp_path / "discrepancy.csv").write_text(
        header + "balanced,int4,0.002,0.08\nlong_heavy,int4,0.009,0.07\n"
    )
    (tmp_path / "ladder.csv").write_text(
        header + "balanced,int4,0.0025,0.09\nbalanced,int3,0.01,0.2\n"
    )
    assert reruns.read_probe(tmp_path) == {
        "int4": {"kl_k3": 0.0025, "routing_layer_max": 0.09},
        "int3": {"kl_k3": 0.01, "routing_layer_max": 0.2},
    }


def test_every_part_fits_its_limit_and_a_part_without_its_rung_is_cut():
    parts = reruns.parts(LADDER_K3)
    names = [p.name for p in parts]
    assert len(names) == len(set(names))
    for part in parts:
        assert part.minutes() < reruns.PART_LIMIT_MIN, part.name
        if part.needs_rung is not None and part.needs_rung > 0:
            # 1e-2, 3e-2 and the routing flip are out of the old ladder's reach
            assert not part.cells and part.cut == "rung not reached", part.name
        elif part.name.startswith(("f1-", "f9-")):
            assert not part.cells and part.cut == "k3 0.002, under the gate", part.name
        else:
            assert part.cells and part.seeds and not part.cut, part.name
    # Split parts keep every seed between their pieces: each finding has 4 seeds in all.
    seeds: dict[str, set[int]] = {}
    for p in parts:
        if p.cells and p.grad_steps == 64:
            seeds.setdefault(p.name.split("-s")[0], set()).update(p.seeds)
    assert seeds and all(len(s) >= 4 for s in seeds.values()), seeds


def test_every_cell_of_every_part_is_a_valid_training_config():
    every_rung = _probe(
        {"int4": 3e-3, "int3": 1e-2, "int4_kv_fp8": 3e-2, "int4_router": 5e-3},
        {"int4_router": 0.2},
    )
    parts = reruns.parts(every_rung)
    assert all(p.cells for p in parts if not p.cut), [p.name for p in parts if not p.cells]
    routing = [c for p in parts if p.needs_rung == reruns.ROUTING_PART for c in p.cells]
    assert routing and {c.precision for c in routing} == {"int4_router"}
    for part in parts:
        budget = part.budget()
        assert budget.eval_prompts == reruns.EVAL_PROMPTS
        names = [c.name for c in part.cells]
        assert len(names) == len(set(names)), part.name
        for cell in part.cells:
            config = training_config(cell, budget, seed=0, model_dir="unused")
            assert config.optimizer.lr == cell.lr


def test_a_part_refuses_runs_from_another_kind_of_cpu(tmp_path: Path):
    run = tmp_path / "runs" / "N1__minirl"
    run.mkdir(parents=True)
    (run / "seed0.json").write_text('{"cpu": "AMD EPYC (AVX512)"}')
    assert reruns.foreign_cpus(tmp_path, "AMD EPYC (AVX512)") == set()
    assert reruns.foreign_cpus(tmp_path, "Intel Xeon (AVX512)") == {"AMD EPYC (AVX512)"}


def test_f1_and_f9_are_cut_where_their_k3_gate_cannot_be_met_and_nothing_else_is():
    """The gate's floor is 1e-2; a rung more than `RUNG_TOLERANCE` below it (5.6e-3) is cut for F1
    and F9, whose verdict there could only be "cannot be tested here", and never for the map. The
    3e-3 rung always is; the 1e-2 rung never is, however low within its tolerance."""
    probe = _probe(
        {"fp32": 0.0, "int4_router": 5.3e-3, "int4_kv_fp8": 5.7e-3, "int3": 2e-2},
        {"int4_router": 0.2},
    )
    assert reruns.gated_out("int4_router", probe) and not reruns.gated_out("int4_kv_fp8", probe)
    assert reruns.chosen_rungs(probe).k3 == ("int4_router", "int4_kv_fp8", "int3")
    cut = {p.name: p.cut for p in reruns.parts(probe) if not p.cells}
    assert cut == {"f1-rung1": "k3 0.0053, under the gate", "f9-rung1": "k3 0.0053, under the gate"}


def test_the_long_runs_are_at_the_strongest_rung_reached():
    every = _probe({"fp32": 0.0, "int4": 3e-3, "int4_kv_fp8": 1e-2, "int3": 2.5e-2})

    def long_runs(probe):
        return [p for p in reruns.parts(probe) if p.grad_steps == reruns.LONG_GRAD_STEPS]

    assert {c.precision for p in long_runs(every) for c in p.cells} == {"int3"}
    assert all("`int3`" in p.what for p in long_runs(every))
    # The old ladder reaches only the 3e-3 rung, with int4: that is the strongest.
    assert {c.precision for p in long_runs(LADDER_K3) for c in p.cells} == {"int4"}
    assert reruns.strongest_dial(reruns.Rungs((None, None, None), None)) == reruns.REGIME_DIAL
