"""`reference/rest.md`: every operation of the server's OpenAPI document, grouped by tag.

`rest_page(document)` is pure; `openapi_document()` builds the app on a throwaway SQLite home
(its lifespan, and with it the lease reaper, never starts: `app.openapi()` does not need it).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from docsgen.markdown import code, generated_note, heading, one_line, page, table
from keel_server.api.app import create_app
from keel_server.platform.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")
Document = Mapping[str, Any]


def openapi_document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            database_url=f"sqlite:///{Path(home, 'keel.db').as_posix()}",
            broker_url="filesystem://",
        )
        app = create_app(settings)
        try:
            return app.openapi()
        finally:
            app.state.ctx.close()


def operations(document: Document) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) in the document's order."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def schema_label(schema: Mapping[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(schema_label(member) for member in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{schema_label(schema.get('items', {}))}]"
    if "enum" in schema:
        return " | ".join(f'"{value}"' for value in schema["enum"])
    return str(schema.get("type", "any"))


def _response_key(status: str, response: Mapping[str, Any]) -> tuple[str, str, str]:
    return status, one_line(response.get("description")), _content_label(response)


def _content_label(item: Mapping[str, Any]) -> str:
    content = item.get("content") or {}
    labels = [
        f"{schema_label(media.get('schema', {}))} ({kind})" for kind, media in content.items()
    ]
    return ", ".join(labels)


def common_errors(document: Document) -> list[tuple[str, str, str]]:
    """The error responses every authenticated operation shares, by status."""
    secured = [op for _, _, op in operations(document) if op.get("security")]
    if not secured:
        return []
    shared = [
        {_response_key(status, r) for status, r in op["responses"].items() if status >= "400"}
        for op in secured
    ]
    return sorted(set.intersection(*shared))


def anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def _auth(operation: Mapping[str, Any], document: Document) -> str:
    names = [name for requirement in operation.get("security", []) for name in requirement]
    if not names:
        return "none"
    schemes = document.get("components", {}).get("securitySchemes", {})
    kinds = [schemes.get(name, {}).get("scheme", name) for name in names]
    return ", ".join(
        f"{kind.capitalize()} token ([authentication](#authentication))" for kind in kinds
    )


def _parameters(operation: Mapping[str, Any]) -> str:
    rows = [
        (
            code(p["name"]),
            p["in"],
            schema_label(p.get("schema", {})),
            "yes" if p.get("required") else "no",
            one_line(p.get("description")),
        )
        for p in operation.get("parameters", [])
    ]
    return table(("parameter", "in", "type", "required", "description"), rows) if rows else ""


def _linked(label: str, schema_links: Mapping[str, str]) -> str:
    name = label.split(" (", 1)[0]
    return f"[{name}]({schema_links[name]}){label[len(name) :]}" if name in schema_links else label


def render_operation(
    method: str,
    path: str,
    operation: Mapping[str, Any],
    document: Document,
    common: set[tuple[str, str, str]],
    schema_links: Mapping[str, str],
) -> str:
    title = f"{code(f'{method} {path}')}: {operation.get('summary', '')}"
    blocks = [heading(3, title, anchor(method, path))]
    if operation.get("description"):
        blocks.append(one_line(operation["description"]))
    facts = [f"- Auth: {_auth(operation, document)}"]
    body = operation.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        facts.append(f"- Request body ({required}): {_linked(_content_label(body), schema_links)}")
    blocks.append("\n".join(facts))
    parameters = _parameters(operation)
    if parameters:
        blocks.append(parameters)
    own = []
    for status, response in operation["responses"].items():
        key = _response_key(status, response)
        if key not in common:
            own.append((code(status), _linked(key[2], schema_links) or "no JSON body", key[1]))
    blocks.append(table(("status", "body", "meaning"), own))
    if operation.get("security") and common:
        blocks.append("Errors: the [common error responses](#errors).")
    return "\n\n".join(blocks)


def _error_body(document: Document) -> str:
    schema = document.get("components", {}).get("schemas", {}).get("ErrorBody")
    if not schema:
        return ""
    required = set(schema.get("required", []))
    rows = [
        (
            code(name),
            schema_label(prop),
            "yes" if name in required else "no",
            one_line(prop.get("description")),
        )
        for name, prop in schema.get("properties", {}).items()
    ]
    intro = "The envelope `ErrorBody` of every error:"
    return intro + "\n\n" + table(("field", "type", "always", "description"), rows)


def rest_page(document: Document, schema_links: Mapping[str, str] | None = None) -> str:
    """The page; `schema_links` maps a schema name to where its fields are documented."""
    schema_links = schema_links or {}
    info = document.get("info", {})
    schemes = document.get("components", {}).get("securitySchemes", {})
    common = common_errors(document)
    blocks = [
        "# REST API",
        generated_note("the server's OpenAPI document (`keel_server.api.app.create_app`)"),
        f"{one_line(info.get('summary'))}: version {info.get('version', '?')}, OpenAPI "
        f"{document.get('openapi', '?')}. A running server also serves this document at "
        "`/openapi.json` and an interactive version at `/docs`.",
        heading(2, "Authentication", "authentication"),
        *(
            f"{code(name)}: {scheme.get('scheme', scheme.get('type'))} "
            f"(`Authorization: Bearer …`). {one_line(scheme.get('description'))}"
            for name, scheme in schemes.items()
        ),
        heading(2, "Errors", "errors"),
        "Every authenticated operation may answer with these statuses:",
        table(("status", "body", "meaning"), [(code(s), b, d) for s, d, b in common]),
        _error_body(document),
    ]
    tags: dict[str, list[str]] = {}
    for method, path, operation in operations(document):
        tag = (operation.get("tags") or ["other"])[0]
        rendered = render_operation(method, path, operation, document, set(common), schema_links)
        tags.setdefault(tag, []).append(rendered)
    for tag, rendered in tags.items():
        blocks += [heading(2, tag.capitalize(), f"tag-{tag}"), *rendered]
    return page(block for block in blocks if block)
