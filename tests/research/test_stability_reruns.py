"""Issue 30's reruns (`research.stability.reruns`): the rung rule, the parts' sizes, their cells."""

from pathlib import Path

from research.stability import reruns
from research.stability.matrix import training_config

LADDER_K3 = {"fp32": 0.0, "fp8_tensor": 5.6e-4, "int4": 2.0e-3, "int4+top_p0.9": 1.6e-3}


def test_a_rung_counts_for_the_target_it_is_nearest_to_and_only_within_the_tolerance():
    assert reruns.rung_for(3e-3, LADDER_K3) == "int4"  # 1.5× off
    assert reruns.rung_for(1e-2, LADDER_K3) is None  # 5× off: not reached
    assert reruns.rung_for(3e-2, {**LADDER_K3, "int4": 2.5e-2}) == "int4"
    assert reruns.rung_for(3e-3, {"fp32": 0.0}) is None


def test_every_part_fits_its_limit_and_a_part_without_its_rung_is_cut():
    parts = reruns.parts(LADDER_K3)
    names = [p.name for p in parts]
    assert len(names) == len(set(names))
    for part in parts:
        assert part.minutes() < reruns.PART_LIMIT_MIN, part.name
        if part.needs_rung is not None and part.needs_rung > 0:
            assert not part.cells, part.name  # 1e-2 and 3e-2 are out of today's ladder's reach
        else:
            assert part.cells and part.seeds, part.name
    # Split parts keep every seed between their pieces: each finding has 4 seeds in all.
    seeds: dict[str, set[int]] = {}
    for p in parts:
        if p.cells and p.grad_steps == 64:
            seeds.setdefault(p.name.split("-s")[0], set()).update(p.seeds)
    assert seeds and all(len(s) >= 4 for s in seeds.values()), seeds


def test_every_cell_of_every_part_is_a_valid_training_config():
    for part in reruns.parts(LADDER_K3):
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
