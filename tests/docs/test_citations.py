"""Every citation in the code resolves inside the repository (docs/house-style.md rule 22).

The tracked code files (Python, JavaScript, TOML, YAML, `.importlinter`, the Makefile) may cite
the project's own pages as `docs/<page>.md §N` (more sections of the page follow as `§3.1, §3.4`
or `§8.1–8.3`), `docs/house-style.md rule N`, and the paper keel implements as `paper §N`, whose
sections docs/concepts/algorithm.md §12 maps. A file fails when it

- cites a document the repository does not hold: the planning notes the code once cited
  (their paper spec, `architecture.md` without `docs/`, `house style N`) or an issue number;
- cites a `docs/` page that does not exist, a section that is not a numbered heading of its page,
  a rule that is not a numbered rule, or a paper section the algorithm page does not map;
- has a bare `§`: a section sign that names no document.

This file is not scanned (its examples of each problem are deliberately wrong), nor mkdocs.yml
(its nav names pages relative to docs/, which is no citation).
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
# mkdocs.yml is the site's own configuration: its nav names pages relative to docs/.
NOT_SCANNED = frozenset({SELF, "mkdocs.yml"})
CODE_SUFFIXES = (".py", ".js", ".toml", ".yml", ".yaml")
CODE_NAMES = (".importlinter", "Makefile")

NUM = r"\d+(?:\.\d+)*"
SECTION = rf"§\s?{NUM}(?:\s?[–-]\s?§?\s?{NUM})?"
CITATION = re.compile(
    rf"(?P<doc>(?<![\w./-])docs/[\w./-]+?\.md|\bpaper)\s+"
    rf"(?P<sections>{SECTION}(?:\s*(?:,|/|\band\b|\bor\b)\s*{SECTION})*)"
)
SECTION_NUMBERS = re.compile(rf"§?\s?({NUM})")
RULES = re.compile(r"docs/house-style\.md\s+rules?\s+(?P<rules>\d+(?:\s*(?:,|\band\b|–|-)\s*\d+)*)")
DOC_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]+?\.md")
OUTSIDE = {
    "the planning notes' paper spec (cite docs/concepts/algorithm.md)": re.compile(
        r"\bpaper[-_]spec\b", re.IGNORECASE
    ),
    "an architecture section without its page (cite docs/architecture.md §N)": re.compile(
        r"\barchitecture\s*§", re.IGNORECASE
    ),
    "architecture.md outside docs/ (cite docs/architecture.md)": re.compile(
        r"(?<!docs/)\barchitecture\.md", re.IGNORECASE
    ),
    "the house style without its page (cite docs/house-style.md rule N)": re.compile(
        r"(?<!docs/)\bhouse[ -]style\b", re.IGNORECASE
    ),
    "an issue number (say the thing itself, or cite a docs page)": re.compile(
        r"\bissues?\s+#?\d+", re.IGNORECASE
    ),
}
HEADING = re.compile(rf"^#{{1,6}}\s+({NUM})\.?\s", re.MULTILINE)
PAPER_MAP_TITLE = "The paper's sections on this page"
PAPER_ROW = re.compile(rf"^\|\s*§({NUM})\s*\|", re.MULTILINE)


def code_files() -> list[str]:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    return sorted(
        path
        for path in tracked
        if path not in NOT_SCANNED
        and (path.endswith(CODE_SUFFIXES) or path.rsplit("/", 1)[-1] in CODE_NAMES)
        and (ROOT / path).is_file()
    )


@cache
def headings(page: str) -> frozenset[str]:
    """The numbers of the numbered headings of `page` (`## 3. MiniRL`, `### 3.1 The objective`)."""
    path = ROOT / page
    if not path.is_file():
        return frozenset()
    return frozenset(HEADING.findall(path.read_text()))


@cache
def paper_sections() -> frozenset[str]:
    """The paper's sections that docs/concepts/algorithm.md maps in its last section."""
    text = (ROOT / "docs/concepts/algorithm.md").read_text()
    start = text.find(PAPER_MAP_TITLE)
    assert start >= 0, f"docs/concepts/algorithm.md lost its section {PAPER_MAP_TITLE!r}"
    table = text[start:].split("\n## ", 1)[0]
    return frozenset(PAPER_ROW.findall(table))


def _numbers(sections: str) -> list[str]:
    return SECTION_NUMBERS.findall(sections)


def problems(text: str) -> list[tuple[int, str]]:
    """(line, what is wrong) for every citation in `text` that does not resolve."""
    found: list[tuple[int, str]] = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    for what, pattern in OUTSIDE.items():
        for m in pattern.finditer(text):
            found.append((line_of(m.start()), f"{m.group(0)!r}: {what}"))
    for m in DOC_PATH.finditer(text):
        if not (ROOT / m.group(0)).is_file():
            found.append((line_of(m.start()), f"{m.group(0)} does not exist"))
    covered: set[int] = set()
    for m in CITATION.finditer(text):
        covered.update(i for i in range(m.start(), m.end()) if text[i] == "§")
        doc = m.group("doc")
        known = paper_sections() if doc == "paper" else headings(doc)
        where = "the paper map of docs/concepts/algorithm.md §12" if doc == "paper" else doc
        for number in _numbers(m.group("sections")):
            if number not in known:
                found.append((line_of(m.start()), f"{doc} §{number}: no such section in {where}"))
    for m in RULES.finditer(text):
        for number in re.findall(r"\d+", m.group("rules")):
            if number not in headings("docs/house-style.md"):
                found.append((line_of(m.start()), f"docs/house-style.md has no rule {number}"))
    for i, char in enumerate(text):
        if char == "§" and i not in covered:
            snippet = text[max(0, i - 30) : i + 10].replace("\n", " ")
            found.append((line_of(i), f"bare § names no document: …{snippet}…"))
    return sorted(found)


def test_every_citation_in_the_code_resolves_inside_the_repository():
    files = code_files()
    assert len(files) > 100, files  # the scan sees the tree, not an empty checkout
    report = [
        f"{path}:{line}: {what}"
        for path in files
        for line, what in problems((ROOT / path).read_text(errors="replace"))
    ]
    assert report == [], "citations that do not resolve:\n" + "\n".join(report)


def test_the_docs_the_code_cites_have_numbered_sections():
    assert {"3", "5", "6", "7"} <= headings("docs/architecture.md")
    assert {"3.1", "8.9", "10.6"} <= headings("docs/concepts/algorithm.md")
    assert {str(n) for n in range(1, 27)} <= headings("docs/house-style.md")
    assert {"2.3", "4.3", "4.4"} <= paper_sections()


def test_each_kind_of_broken_citation_is_reported():
    good = (
        "docs/architecture.md §5; docs/concepts/algorithm.md §3.1, §3.4 and §8.1–8.3; "
        "docs/house-style.md rule 14; docs/house-style.md rules 23 and 24; paper §4.3"
    )
    assert problems(good) == []
    broken = {
        "see paper_spec.md §3.1": "paper spec",
        "(architecture §5)": "architecture section without its page",
        "see architecture.md": "architecture.md outside docs/",
        "(house style 14)": "house style without its page",
        "the sweep of issue 13": "an issue number",
        "docs/nowhere.md §1": "does not exist",
        "docs/architecture.md §42": "no such section",
        "docs/concepts/algorithm.md §3.1, §99.9": "no such section",
        "docs/concepts/algorithm.md §8.1–8.99": "no such section",
        "docs/house-style.md rule 99": "no rule 99",
        "paper §9.9": "no such section",
        "as §3.1 says": "bare §",
    }
    for text, expected in broken.items():
        reported = " | ".join(what for _, what in problems(text))
        assert expected in reported, (text, reported)
