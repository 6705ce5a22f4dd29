"""`scripts/demo.py`'s progress line shows a stability-guard alert once one fires (fast: the
Progress class alone, fed the `guard` event the job's stream carries)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def _demo(monkeypatch):
    # As when it runs as a script: its own folder is on the path (it imports demo_service).
    monkeypatch.syspath_prepend(str(DEMO.parent))
    spec = importlib.util.spec_from_file_location("keel_demo_script", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_progress_line_shows_a_guard_alert(capsys, monkeypatch):
    progress = _demo(monkeypatch).Progress(16)
    progress.update(3, {"reward/mean": 0.5})
    assert "guard" not in progress.line()
    event = {
        "trigger": "kl",
        "step": 3,
        "action": "alert",
        "reason": "k3 KL(μ‖π_old) 0.02 > 2 × its baseline 0.003",
    }
    progress.alert(event)
    assert progress.line().endswith("| guard alert: kl at step 3")
    out = capsys.readouterr().out
    assert "guard: k3 KL(μ‖π_old) 0.02 > 2 × its baseline 0.003 (alert)" in out
