"""Promises of the packaging itself: the SDK stays light (an install without extras runs the
user commands), and the API never pulls in torch."""

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

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


def _install_sdk_only(tmp_path: Path) -> Path:
    """`pip install <repo>` without extras into a fresh venv; returns its bin/ folder. The
    sources are copied first so that the build's egg-info and build/ land in tmp_path, not in
    the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("client", "server", "worker"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


@pytest.mark.slow  # 13-20 s here (pip cache warm, 2 busy cores); needs the package index
def test_an_sdk_only_install_runs_the_user_commands_and_names_the_extras(tmp_path):
    started = time.monotonic()
    bin_dir = _install_sdk_only(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("KEEL_")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, env=env, timeout=60
        )

    # The server is installed with the SDK (one distribution) but cannot be imported: whatever
    # works below works without it.
    server = run("python", "-c", "import keel_server.cli")
    assert server.returncode == 1 and "No module named 'pydantic_settings'" in server.stderr

    listed = run("keel", "jobs", "list", "--help")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("usage: keel jobs list")
    assert all(option in listed.stdout for option in ("--status", "--limit", "--cursor"))
    unreachable = run("keel", "jobs", "list", "--base-url", "http://127.0.0.1:9", "--api-key", "k")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: could not connect")
    assert unreachable.stderr.count("\n") == 1

    operators = (
        (["keel", "up"], "worker"),
        (["keel", "up", "--help"], "worker"),
        (["keel", "migrate"], "server"),
        (["keel-worker"], "worker"),
    )
    for argv, extra in operators:
        operator = run(*argv)
        assert operator.returncode == 1
        assert f"pip install 'keel-rl[{extra}]'" in operator.stderr
        assert "Traceback" not in operator.stderr
    print(f"SDK-only install and checks: {time.monotonic() - started:.1f} s")
