"""A generated page's sections and table rows, read back from its markdown the way a reader
finds them: by anchor, then by the name in the first column."""

from __future__ import annotations

import re

_ANCHORED = re.compile(r"^#{1,6} .*\{#([\w-]+)\}$")


def sections(markdown: str) -> dict[str, str]:
    """The text under each anchored heading, up to the next heading, by anchor."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in markdown.splitlines():
        if line.startswith("#"):
            match = _ANCHORED.match(line)
            current = found.setdefault(match[1], []) if match else None
        elif current is not None:
            current.append(line)
    return {anchor: "\n".join(lines) for anchor, lines in found.items()}


def cells(row: str) -> list[str]:
    """A table row's cells, split on the pipes that are not escaped."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the one table row whose first cell is `first_cell`."""
    matches = [
        cells(line) for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")
    ]
    assert len(matches) == 1, f"{len(matches)} rows for {first_cell}"
    return matches[0]
