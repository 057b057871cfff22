"""The OpenAPI 3.1 document of the HTTP API, assembled from the YAML parts in ``openapi/``, and its routes.

``openapi/common.yaml`` holds the document's head (``openapi``, ``info``) and the shared components; every
other ``openapi/*.yaml`` holds the ``paths`` (and any ``components`` of its own) of one area of the API.
:func:`assemble` merges them: a path, a method of a path or a component defined by two parts is an error
(:class:`DocumentError`), as is a part with other top-level keys. The server builds the document once, on
the first request of ``GET /api/v1/openapi.json`` (public); ``GET /api/v1/docs`` is a small page, shipped
with the package, that renders it (no outside assets). The tests check every API request and response
they make against the same document (docs/api.md "The API document").
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from aiohttp import web

PARTS_DIR = Path(__file__).parent / "openapi"
COMMON = "common.yaml"
PART_KEYS = frozenset({"paths", "components"})  # what a part other than common.yaml may hold
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


class DocumentError(ValueError):
    """The parts do not make one document (a duplicate, an unknown key, a part that is not a mapping)."""


def _load(path: Path) -> dict[str, Any]:
    import yaml  # only when the document is built: the command line never needs it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when present: the same, faster
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DocumentError(f"{path.name}: not a mapping")
    return data


def assemble(parts_dir: Path = PARTS_DIR) -> dict[str, Any]:
    """The document made of ``common.yaml`` and every other ``*.yaml`` of `parts_dir` (in name order)."""
    doc = _load(parts_dir / COMMON)
    doc.setdefault("paths", {})
    doc.setdefault("components", {})
    origin: dict[tuple[str, ...], str] = {}
    for section, entries in doc["components"].items():
        for name in entries or {}:
            origin[("components", section, name)] = COMMON
    for route, item in doc["paths"].items():
        for method in item or {}:
            origin[("paths", route, method)] = COMMON
    for path in sorted(parts_dir.glob("*.yaml")):
        if path.name == COMMON:
            continue
        part = _load(path)
        unknown = set(part) - PART_KEYS
        if unknown:
            raise DocumentError(f"{path.name}: only paths and components may be defined, not {sorted(unknown)}")
        for route, item in (part.get("paths") or {}).items():
            if not isinstance(item, dict):
                raise DocumentError(f"{path.name}: path {route!r} is not a mapping")
            merged = doc["paths"].setdefault(route, {})
            for key, value in item.items():
                where = ("paths", route, key)
                if where in origin:
                    raise DocumentError(f"{path.name}: {key} {route} is already defined in {origin[where]}")
                origin[where] = path.name
                merged[key] = value
        for section, entries in (part.get("components") or {}).items():
            if not isinstance(entries, dict):
                raise DocumentError(f"{path.name}: components.{section} is not a mapping")
            merged = doc["components"].setdefault(section, {})
            for name, value in entries.items():
                where = ("components", section, name)
                if where in origin:
                    raise DocumentError(f"{path.name}: component {section}.{name} is already defined in "
                                        f"{origin[where]}")
                origin[where] = path.name
                merged[name] = value
    doc["paths"] = dict(sorted(doc["paths"].items()))
    return doc


@functools.cache
def document() -> dict[str, Any]:
    """The assembled document (built once per process)."""
    return assemble()


@functools.cache
def _document_json() -> bytes:
    return json.dumps(document(), indent=1, sort_keys=False).encode()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_document_json(), content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=(PARTS_DIR / "docs.html").read_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "public, max-age=300",
                                 "Content-Security-Policy": "default-src 'none'; script-src 'self' 'unsafe-inline'; "
                                                            "style-src 'unsafe-inline'; connect-src 'self'"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/api/v1/docs", docs_page)


__all__ = ["COMMON", "DocumentError", "HTTP_METHODS", "PARTS_DIR", "add_routes", "assemble", "document"]
