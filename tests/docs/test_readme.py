"""README.md is the front door (docs/house-style.md rule 21): at most 200 lines, the two commands as
CI and readers type them, Python examples of at most 10 lines (test_code_blocks.py runs them),
and links that lead to files of the repository, as GitHub shows it."""

from __future__ import annotations

import re
from pathlib import Path

from markdown_blocks import fenced_blocks

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_LINES = 200
MAX_EXAMPLE_LINES = 10
# [text](target): the targets of inline links; web addresses and in-page anchors are not files.
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def test_the_readme_fits_in_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move the rest into docs/"


def test_the_two_commands_are_in_a_shell_block():
    blocks = fenced_blocks(README.read_text(encoding="utf-8"), "README.md")
    commands = {
        line.split("#")[0].strip()
        for block in blocks
        if block.language in ("bash", "sh", "shell")
        for line in block.code.splitlines()
    }
    assert {"make demo", "make test"} <= commands


def test_the_python_examples_are_short():
    blocks = fenced_blocks(README.read_text(encoding="utf-8"), "README.md")
    python = [block for block in blocks if block.is_python]
    assert len(python) >= 2  # the SDK quickstart and the reward service
    lengths = {block.line: len(block.code.splitlines()) for block in python}
    assert all(n <= MAX_EXAMPLE_LINES for n in lengths.values()), lengths


def test_every_relative_link_of_the_readme_names_a_file_or_folder():
    targets = [m.group("target") for m in LINK.finditer(README.read_text(encoding="utf-8"))]
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:|^#", t)]
    assert local, "the README links into the manual"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing
    assert any(t.startswith("docs/") for t in local)
