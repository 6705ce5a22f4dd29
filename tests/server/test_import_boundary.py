"""The API process never imports torch (docs/architecture.md §3)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_app_does_not_import_torch(tmp_path) -> None:
    code = (
        "import sys; import keel_server.main; "
        "heavy = [m for m in ('torch', 'transformers', 'keel_worker') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {"KEEL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
