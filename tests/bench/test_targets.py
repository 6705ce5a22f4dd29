"""The speed-targets page says what the committed results files say."""

from __future__ import annotations

import json

from bench import targets


def test_the_committed_page_is_the_rendering_of_the_results_files() -> None:
    assert targets.OUT.read_text() == targets.page(), "run: python -m bench.targets"


def _ingest(tmp_path, monkeypatch, points: list[tuple[float, float]]):
    result = {
        "cpu_ms_per_post": 1.0,
        "machine": {"cpu": "X", "cores": 2, "load_average_before": [0.5, 0.5, 0.5]},
        "servers": [
            {
                "server_workers": 2,
                "points": [{"requests_per_s": r, "p99_ms": p} for r, p in points],
            }
        ],
    }
    (tmp_path / "reward_ingest_postgres.json").write_text(json.dumps(result))
    monkeypatch.setattr(targets, "RESULTS", tmp_path)
    return targets.ingest_rows()[0]


def test_ingest_counts_only_points_within_the_latency_bound(tmp_path, monkeypatch) -> None:
    row = _ingest(tmp_path, monkeypatch, [(900.0, 20.0), (1200.0, 80.0)])
    assert not row.met and row.measured.startswith("900 /s at p99 20 ms")
    row = _ingest(tmp_path, monkeypatch, [(900.0, 20.0), (1001.0, 49.0)])
    assert row.met and row.measured.startswith("1001 /s at p99 49 ms")


def test_a_missing_results_file_is_not_measured(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(targets, "RESULTS", tmp_path)
    assert [r.met for r in targets.demo_rows()] == [None]
    assert "not measured" in targets.render(targets.demo_rows())


def test_a_row_of_another_cpu_kind_than_the_newest_run_is_stale() -> None:
    row = targets.Row("t", "g", "m", True, "AMD EPYC (AVX512)", "1", "f")
    assert "(AVX512), *stale* |" in targets.render([row], newest="AVX2")
    assert "(AVX512) |" in targets.render([row], newest="AVX512")
