"""Promises of the packaging itself: the SDK stays light and the API never pulls in torch."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_base_install_is_the_sdk_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(dep.split(">")[0].split("=")[0].strip() for dep in project["dependencies"])
    assert names == ["httpx", "pydantic"]
    assert {"server", "worker", "vllm", "dev", "all"} <= set(project["optional-dependencies"])


def test_torch_is_pinned_for_every_install():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_sdk_does_not_import_server_or_worker_code():
    loaded = _modules_after_import("keel")
    assert not {"torch", "fastapi", "sqlalchemy", "keel_server", "keel_worker"} & loaded
