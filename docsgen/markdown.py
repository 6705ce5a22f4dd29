"""Markdown building blocks of the generated pages: table cells, tables, headings with anchors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def one_line(text: str | None) -> str:
    """A docstring or description on one line, its paragraphs kept apart by a space."""
    return " ".join((text or "").split())


def code(text: str) -> str:
    """`text` as a code span (a double fence when it holds a backtick)."""
    fence = "``" if "`" in text else "`"
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def cell(text: str) -> str:
    """Text safe inside a table cell: one line, pipes escaped (also inside code spans, which
    the tables extension splits on otherwise)."""
    return one_line(text).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def heading(level: int, title: str, anchor: str | None = None) -> str:
    """A heading; `anchor` fixes its id (attr_list) so links survive a change of title."""
    suffix = f" {{#{anchor}}}" if anchor else ""
    return f"{'#' * level} {title}{suffix}"


def generated_note(sources: str) -> str:
    """The line under each generated page's title saying where it comes from."""
    return f"*Generated from {sources} each time the site is built.*"


def page(blocks: Iterable[str]) -> str:
    """A page from its blocks (headings, paragraphs, tables), a blank line between each."""
    return "\n\n".join(blocks) + "\n"
