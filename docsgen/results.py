"""`results/stability.md` and `results/benchmarks.md`: the committed results files, one section
each, rendered as they are when the site is built.

Each file's headings move one level down under the page's title, and its relative links are
rewritten for the page: a linked file (a report's figures) is served by the site as an asset
under `results/assets/<its path in the repository>`; a linked folder goes to the repository. A
link to something missing fails the build, as a broken figure should.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from docsgen.markdown import code, generated_note

STABILITY_REPORT = "research/results/stability/REPORT.md"
GUARD_RESULTS = "research/results/guard"
BENCH_RESULTS = "bench/results"
# Where the results pages sit in the site, and where their linked files are served.
PAGES_DIR = "results"
ASSETS_DIR = "assets"

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,5}) ")
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
_EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|#|/)", re.IGNORECASE)


@dataclass
class Rendered:
    """A page's markdown and the files it links, by their path in the site's docs."""

    markdown: str
    assets: dict[str, Path] = field(default_factory=dict)


def _rewrite_link(
    target: str, source: Path, root: Path, repo_url: str, assets: dict[str, Path]
) -> str:
    if _EXTERNAL.match(target):
        return target
    path_part, hash_, fragment = target.partition("#")
    resolved = (root / source.parent / path_part).resolve()
    relative = resolved.relative_to(root.resolve()).as_posix()
    if resolved.is_dir():
        return f"{repo_url}/tree/main/{relative}"
    if not resolved.is_file():
        raise ValueError(f"{source.as_posix()} links to {target}, which does not exist")
    assets[f"{PAGES_DIR}/{ASSETS_DIR}/{relative}"] = resolved
    return f"{ASSETS_DIR}/{relative}{hash_}{fragment}"


def section(source: str, root: Path, repo_url: str) -> Rendered:
    """One results file as a section: headings one level down, the file named under its title,
    links rewritten for the results page."""
    rendered = Rendered("")
    lines: list[str] = []
    fenced = False
    titled = False
    for line in (root / source).read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            line = _HEADING.sub(r"#\1 ", line)
            line = _LINK.sub(
                lambda m: (
                    m[1] + _rewrite_link(m[2], Path(source), root, repo_url, rendered.assets) + m[3]
                ),
                line,
            )
        lines.append(line)
        if not fenced and not titled and line.startswith("## "):
            lines += ["", f"From {code(source)}."]
            titled = True
    if not titled:
        lines[:0] = [f"## {Path(source).stem}", "", f"From {code(source)}."]
    rendered.markdown = "\n".join(lines)
    return rendered


def _page(title: str, intro: list[str], sources: list[str], root: Path, repo_url: str) -> Rendered:
    sections = [section(source, root, repo_url) for source in sources]
    markdown = "\n\n".join([f"# {title}", *intro, *(s.markdown for s in sections)]) + "\n"
    assets = {uri: path for s in sections for uri, path in s.assets.items()}
    return Rendered(markdown, assets)


def stability_sources(root: Path) -> list[str]:
    guard = sorted(p.relative_to(root).as_posix() for p in (root / GUARD_RESULTS).glob("*.md"))
    return [STABILITY_REPORT, *guard]


def benchmark_sources(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / BENCH_RESULTS).glob("*.md"))


def stability_page(root: Path, repo_url: str) -> Rendered:
    intro = [
        generated_note(f"{code(STABILITY_REPORT)} and {code(GUARD_RESULTS + '/*.md')}"),
        "What the research harness (`research/`) found: the paper's stability findings retested "
        "on small Mixture-of-Experts models in a gentle and a stress suite, and the evidence "
        "behind the stability guard (its thresholds chosen from those runs, and the guard at "
        "work in service jobs). Each section is one results file as committed.",
    ]
    return _page("Stability", intro, stability_sources(root), root, repo_url)


def benchmarks_page(root: Path, repo_url: str) -> Rendered:
    intro = [
        generated_note(f"{code(BENCH_RESULTS + '/*.md')}"),
        "Speed and size measurements, one section per results file as committed, each written "
        "by its benchmark under `bench/`.",
    ]
    return _page("Benchmarks", intro, benchmark_sources(root), root, repo_url)
