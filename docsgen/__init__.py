"""The docs site's generated pages: markdown rendered from the code and the results files.

`mkdocs build` runs `docsgen.mkdocs_hooks`, which registers the pages of `docsgen.pages.PAGES` as
files of the site; nothing they contain is committed as text (docs/house-style.md rule 21). The
modules here are pure functions from keel's own definitions to markdown: the wire models
(`docsgen.reference.config_page`), the OpenAPI document (`rest_page`), the metric vocabulary
(`metrics_page`), `Settings` (`settings_page`) and the results files (`docsgen.results`).
"""
