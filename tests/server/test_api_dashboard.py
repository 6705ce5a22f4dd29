"""`/dashboard` serves its page and assets without a key (they hold no data), only the files it
names, outside the OpenAPI schema; the browser tests in tests/e2e/test_dashboard.py use it."""

from __future__ import annotations

import re


def test_page_and_assets_are_served(client) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"]
    for url, media in zip(sorted(assets), ("text/css", "text/javascript"), strict=True):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), url
        assert len(r.content) > 500
    script = client.get("/dashboard/static/dashboard.js").text
    assert "/v1/jobs" in script and "innerHTML" not in script  # text only goes in as text


def test_the_page_may_not_be_framed_nor_run_inline_or_foreign_script(client) -> None:
    for url in ("/dashboard", "/dashboard/static/dashboard.js"):
        headers = client.get(url).headers
        assert headers["x-frame-options"] == "DENY", url
        assert headers["x-content-type-options"] == "nosniff", url
        policy = dict(
            directive.strip().split(" ", 1)
            for directive in headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
        assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'"
    # The page itself holds no inline script or style the policy would block.
    page = client.get("/dashboard").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers


def test_only_the_dashboards_files_are_served(client) -> None:
    for name in ("index.html", "..%2Fapp.py", "missing.js"):
        r = client.get(f"/dashboard/static/{name}")
        assert r.status_code == 404 and r.json()["code"] == "not_found", name


def test_dashboard_routes_stay_out_of_the_api_schema(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard") or p == "/metrics"]
