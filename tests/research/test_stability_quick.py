"""End to end: the quick mode on a tiny budget writes every artifact and judges every run."""

import csv

import pytest
from harness_cli import run_harness

TINY = [
    "--sft-max-steps",
    "10",
    "--grad-steps",
    "4",
    "--eval-every",
    "2",
    "--eval-prompts",
    "8",
    "--cells",
    "N1/reinforce,N2/minirl+R2",
]


@pytest.mark.slow
def test_quick_mode_writes_runs_summaries_figures_and_report(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run_harness("run", "--quick", "--out", str(out), *TINY, cache=cache)
    # A run says how far it is at each quarter (here every grad step with an evaluation).
    assert "N2/minirl+R2 seed 0: grad step 2/4, held-out " in result.stdout

    # Cells matched by the filter: N1/reinforce, N1/reinforce+R3, bf16/N1/reinforce,
    # N2/minirl+R2, N2/minirl+R2-noclip; one seed each.
    run_csvs = sorted(out.glob("runs/*/seed0.csv"))
    assert len(run_csvs) == 5
    with run_csvs[0].open() as f:
        rows = list(csv.DictReader(f))
    assert {
        "grad_step",
        "train_reward",
        "eval_acc",
        "entropy",
        "kl_k1",
        "clip_frac",
        "is_trunc_frac",
        "routing_infer_vs_train",
        "grad_norm",
    } <= set(rows[0])
    assert rows[-1]["grad_step"] == "4" and rows[-1]["eval_acc"] != ""
    assert (cache / "coldstart").is_dir()  # the cold start went to the env-var cache
    assert (out / "discrepancy.csv").is_file() and (out / "coldstarts.json").is_file()
    # Results are committed: nothing in them may name a path of the machine that made them.
    records = [out / "coldstarts.json", *out.glob("runs/*/seed0.json")]
    assert not [p.name for p in records if str(tmp_path) in p.read_text()]

    with (out / "summary_runs.csv").open() as f:
        judged = list(csv.DictReader(f))
    assert len(judged) == 5
    assert all(r["collapsed"] in ("0", "1") and r["reason"] for r in judged)

    report = (out / "REPORT.md").read_text()
    # The criterion is stated before any result, and every run gets a verdict row.
    assert report.index("## Collapse criterion") < report.index("## Findings")
    assert report.count("| `N2/minirl+R2` | 0 |") == 1
    for regime in ("on_policy", "off_policy_N2", "precision_bf16", "cold_start"):
        assert (out / "figures" / f"{regime}.png").stat().st_size > 10_000

    # `report` rebuilds the derived artifacts from the saved runs alone.
    (out / "REPORT.md").unlink()
    (out / "figures" / "on_policy.png").unlink()
    run_harness("report", "--out", str(out), cache=cache)
    assert (out / "REPORT.md").read_text() == report
    assert (out / "figures" / "on_policy.png").is_file()
