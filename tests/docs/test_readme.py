"""README.md is the front door (house style rule 21): at most 200 lines, the two commands as CI and
readers type them, and links that lead somewhere. Its Python runs in test_code_blocks.py."""

from __future__ import annotations

import re
from pathlib import Path

from markdown_blocks import fenced_blocks

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_LINES = 200
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


def test_every_relative_link_of_the_readme_names_a_file_or_folder():
    targets = [m.group("target") for m in LINK.finditer(README.read_text(encoding="utf-8"))]
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:|^#", t)]
    assert local, "the README links into the manual"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing
    assert any(t.startswith("docs/") for t in local)
