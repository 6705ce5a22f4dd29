"""`mkdocs build --strict` builds the whole site, generated pages included, and a committed copy
of a generated page is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = (
    "reference/config",
    "reference/rest",
    "reference/metrics",
    "reference/settings",
    "results/stability",
    "results/benchmarks",
)


def test_the_site_builds_strictly_with_every_generated_page(tmp_path: Path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for page in GENERATED:
        assert (site / page / "index.html").is_file(), page
    config = (site / "reference/config/index.html").read_text(encoding="utf-8")
    assert "<code>guard.kl.ratio</code>" in config and 'id="dppotvconfig"' in config
    sdk = (site / "reference/sdk/index.html").read_text(encoding="utf-8")
    for name in ("keel.Client", "AsyncClient", "Jobs", "wait", "NotFoundError"):
        assert name in sdk, name
    stability = (site / "results/stability/index.html").read_text(encoding="utf-8")
    figure = "assets/research/results/stability/stress/figures/stability_map.png"
    assert f'src="../{figure}"' in stability
    assert (site / "results" / figure).is_file()


def test_a_committed_copy_of_a_generated_page_is_refused(tmp_path: Path):
    from mkdocs.config import load_config
    from mkdocs.structure.files import File, Files

    from docsgen.mkdocs_hooks import on_files

    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "metrics.md").write_text("# by hand\n", encoding="utf-8")
    files = Files([File("reference/metrics.md", str(tmp_path), str(tmp_path / "site"), True)])
    with pytest.raises(ValueError, match=r"committed copies: \['reference/metrics\.md'\]"):
        on_files(files, load_config(str(ROOT / "mkdocs.yml")))
