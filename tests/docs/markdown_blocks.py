"""The fenced code blocks of the project's Markdown pages, as `test_code_blocks.py` runs them.

A page is README.md or any `docs/**/*.md`. A block is a fenced code block (``` or ~~~, indented
or not, as in a list item); its language is the first word of the fence's info string
(`python`, `py` and `python3` are Python; `{.python}` and `python title="x"` count too). A Python
block opts out of being run only by starting with the marker comment

    # docs: not run — <why>

(an en dash, a hyphen or `--` may stand for the em dash; the reason is required). Standard
library only: the test imports it before anything of keel.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_LANGUAGE = re.compile(r"^\{?\.?(?P<lang>[\w+#-]+)")
_OPT_OUT = re.compile(r"^#\s*docs:\s*not run\s*(?:—|–|--|-)\s*(?P<reason>\S.*?)\s*$")
_CLIENT = re.compile(r"\b(?:Async)?Client\(")


@dataclass(frozen=True)
class Block:
    """One fenced block: the page it is on (relative to the repository), the 1-based line of
    its first code line, its language (lower case, "" when the fence names none) and its code,
    dedented by the fence's own indentation."""

    page: str
    line: int
    language: str
    code: str

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON_LANGUAGES

    @property
    def opt_out(self) -> str | None:
        """The reason of the block's `# docs: not run — <why>` marker, or None: it runs."""
        first = next((line.strip() for line in self.code.splitlines() if line.strip()), "")
        found = _OPT_OUT.match(first)
        return found.group("reason") if found else None

    @property
    def runs(self) -> bool:
        return self.is_python and self.opt_out is None

    @property
    def talks_to_keel(self) -> bool:
        """It builds an SDK client, so it needs a running keel service."""
        return bool(_CLIENT.search(self.code))


def fenced_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of `text`, in order. An unclosed fence runs to the end of the page
    (as CommonMark reads it)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opened = _OPEN.match(lines[i])
        if opened is None:
            i += 1
            continue
        fence, indent = opened.group("fence"), len(opened.group("indent"))
        language = _LANGUAGE.match(opened.group("info").strip())
        body: list[str] = []
        i += 1
        start = i + 1  # 1-based number of the first code line
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(_unindent(lines[i], indent))
            i += 1
        lang = language.group("lang").lower() if language else ""
        blocks.append(Block(page, start, lang, textwrap.dedent("\n".join(body)) + "\n"))
        i += 1
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _unindent(line: str, indent: int) -> str:
    """`line` without up to `indent` leading spaces (the fence's indentation, as in a list)."""
    cut = 0
    while cut < indent and cut < len(line) and line[cut] in " \t":
        cut += 1
    return line[cut:]


def pages(root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    found = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [page for page in found if page.is_file()]


def page_blocks(root: Path, page: Path) -> list[Block]:
    return fenced_blocks(page.read_text(encoding="utf-8"), page.relative_to(root).as_posix())
