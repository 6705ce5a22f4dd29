"""MkDocs hooks (`hooks:` in mkdocs.yml): the generated pages join the site's files at build
time, and `mkdocs serve` rebuilds when a results file changes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MkDocs loads this file by its path. The pages describe this checkout, so its packages come
# first: docsgen (not installed, like research and bench), the SDK and the server.
for folder in ("server", "client", "."):
    sys.path.insert(0, str(ROOT / folder))

from mkdocs.config.defaults import MkDocsConfig  # noqa: E402
from mkdocs.livereload import LiveReloadServer  # noqa: E402
from mkdocs.structure.files import File, Files  # noqa: E402

from docsgen.pages import WATCHED, generate  # noqa: E402


def on_files(files: Files, config: MkDocsConfig) -> Files:
    generated = generate(ROOT, config.repo_url or "")
    committed = [uri for uri in generated.pages if files.get_file_from_path(uri) is not None]
    if committed:
        raise ValueError(f"generated at build time, delete the committed copies: {committed}")
    for uri, content in generated.pages.items():
        files.append(File.generated(config, uri, content=content))
    for uri, path in generated.assets.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_serve(server: LiveReloadServer, config: MkDocsConfig, builder) -> LiveReloadServer:
    for folder in WATCHED:
        server.watch(str(ROOT / folder))
    return server
