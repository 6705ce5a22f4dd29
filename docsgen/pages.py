"""The site's generated pages and the files they link, by their path under `docs/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from docsgen.config_page import config_page, documented_models
from docsgen.metrics_page import metrics_page
from docsgen.rest_page import openapi_document, rest_page
from docsgen.results import benchmarks_page, stability_page
from docsgen.settings_page import settings_page

ROOT = Path(__file__).resolve().parents[1]
# Folders whose changes rebuild a served site (`mkdocs serve`): the results files. The code the
# reference pages come from is imported once per serve, so a change there needs a restart.
WATCHED = ("research/results", "bench/results")


@dataclass(frozen=True)
class Generated:
    pages: dict[str, str]
    assets: dict[str, Path]


def reference_pages() -> dict[str, str]:
    return {
        "reference/config.md": config_page(),
        "reference/rest.md": rest_page(openapi_document(), documented_models()),
        "reference/metrics.md": metrics_page(),
        "reference/settings.md": settings_page(),
    }


def generate(root: Path = ROOT, repo_url: str = "") -> Generated:
    """Every generated page, and the results files' figures, from the checkout at `root`."""
    stability = stability_page(root, repo_url)
    benchmarks = benchmarks_page(root, repo_url)
    pages = {
        **reference_pages(),
        "results/stability.md": stability.markdown,
        "results/benchmarks.md": benchmarks.markdown,
    }
    return Generated(pages, {**stability.assets, **benchmarks.assets})
