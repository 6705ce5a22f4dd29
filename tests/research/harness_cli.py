"""The stability harness's CLI as its end-to-end tests run it: `python -m research.stability`
from the repository root, with its cold-start cache in the test's own folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_harness(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"KEEL_STABILITY_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "research.stability", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
