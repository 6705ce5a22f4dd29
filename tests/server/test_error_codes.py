"""Error codes are the typed `ErrorCode`: every code has its status, and every literal code the
server raises is one of them (a typo here fails this test, not a request in production)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import keel_server
from keel.types.errors import STATUS_OF_CODE, ErrorCode

SERVER = Path(keel_server.__file__).parent


def test_every_code_has_a_status() -> None:
    assert set(STATUS_OF_CODE) == set(get_args(ErrorCode))


def _raised_codes() -> list[tuple[str, str]]:
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            position = {"ServiceError": 0, "envelope": 1}.get(name)
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((f"{path.name}:{node.lineno}", arg.value))
    return found


def test_every_code_the_server_raises_is_an_error_code() -> None:
    raised = _raised_codes()
    assert len(raised) > 20  # the scan sees the services and the API
    unknown = [(where, code) for where, code in raised if code not in get_args(ErrorCode)]
    assert unknown == []
