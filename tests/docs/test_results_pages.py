"""The results pages carry every results file, one section each, with their figures served by
the site; a results file that links a missing file fails the build."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docsgen.results import benchmark_sources, section, stability_sources

ROOT = Path(__file__).resolve().parents[2]
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _outside_fences(markdown: str) -> list[str]:
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def test_stability_page_has_the_report_and_every_guard_result(generated):
    page = generated.pages["results/stability.md"]
    sources = ["research/results/stability/REPORT.md"]
    sources += sorted(
        p.relative_to(ROOT).as_posix() for p in ROOT.glob("research/results/guard/*.md")
    )
    assert stability_sources(ROOT) == sources and len(sources) >= 3
    for source in sources:
        title = (ROOT / source).read_text(encoding="utf-8").splitlines()[0].removeprefix("# ")
        assert f"## {title}\n\nFrom `{source}`." in page
    assert "### Stress suite" in page  # the report's stress section comes along, one level down
    assert [line for line in _outside_fences(page) if line.startswith("# ")] == ["# Stability"]


def test_every_figure_of_the_report_is_served_next_to_the_page(generated):
    report = (ROOT / "research/results/stability/REPORT.md").read_text(encoding="utf-8")
    figures = _IMAGE.findall(report)
    assert len(figures) >= 8
    page = generated.pages["results/stability.md"]
    for figure in figures:
        repo_path = f"research/results/stability/{figure}"
        assert f"](assets/{repo_path})" in page
        assert generated.assets[f"results/assets/{repo_path}"] == (ROOT / repo_path).resolve()
        assert (ROOT / repo_path).is_file()


def test_benchmarks_page_has_one_section_per_results_file(generated):
    page = generated.pages["results/benchmarks.md"]
    sources = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("bench/results/*.md"))
    assert benchmark_sources(ROOT) == sources and len(sources) >= 8
    for source in sources:
        assert page.count(f"From `{source}`.") == 1


def test_links_of_a_results_file(tmp_path: Path):
    (tmp_path / "out" / "figs").mkdir(parents=True)
    (tmp_path / "out" / "figs" / "a.png").write_bytes(b"png")
    (tmp_path / "out" / "runs").mkdir()
    (tmp_path / "out" / "r.md").write_text(
        "# R\n\n![a](figs/a.png) [runs](runs) [web](https://x.org/y) [top](#r)\n"
        "```\n# not a heading ![no](missing.png)\n```\n",
        encoding="utf-8",
    )
    rendered = section("out/r.md", tmp_path, "https://github.com/o/r")
    assert rendered.markdown.splitlines()[:3] == ["## R", "", "From `out/r.md`."]
    assert "![a](assets/out/figs/a.png)" in rendered.markdown
    assert "[runs](https://github.com/o/r/tree/main/out/runs)" in rendered.markdown
    assert "[web](https://x.org/y) [top](#r)" in rendered.markdown
    assert "# not a heading ![no](missing.png)" in rendered.markdown  # code is left alone
    assert rendered.assets == {"results/assets/out/figs/a.png": tmp_path / "out/figs/a.png"}


def test_a_link_to_a_missing_file_fails(tmp_path: Path):
    (tmp_path / "r.md").write_text("# R\n\n![gone](figs/gone.png)\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"gone\.png"):
        section("r.md", tmp_path, "")
