"""Every route of the router × every kind of credential, every method, paths written in other ways.

No request without the right credential gets a 2xx; no request at all gets a 5xx. The routes are read
from the application's router, so a route added later is attacked here without being listed.
"""
from __future__ import annotations

import pytest

from .routes import IN_BODY_VERDICT, allowed, body_for, required

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # authentication is not storage

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _routes(armed) -> list[tuple[str, str]]:
    routes = sorted({(r.method, r.resource.canonical) for r in armed.srv.app.router.routes()},
                    key=lambda mc: (mc[1], mc[0]))
    assert len(routes) > 40  # the whole application, every feature's routes included
    return routes


async def _send(session, armed, method: str, path: str, headers: dict, body: bytes | None = None):
    async with session.request(method, armed.raw_url(path), headers=headers, data=body,
                               allow_redirects=False) as resp:
        return resp.status, (await resp.read())[:400]


async def _credentials(armed) -> list[str]:
    """Each route with each credential: 2xx only for the right one (or on public routes), never a 5xx."""
    creds = armed.credentials()
    problems, accepted, basic_ok = [], 0, 0
    async with armed.session() as session:
        for method, canonical in _routes(armed):
            path = armed.route_path(canonical)
            for name, headers in creds.items():
                body, ctype = body_for(armed, method, canonical)
                status, text = await _send(session, armed, method, path, {**headers, **ctype}, body)
                where = f"{method} {path} [{name}] -> {status} {text[:120]!r}"
                if status >= 500:
                    problems.append("5xx: " + where)
                elif 200 <= status < 300 and not allowed(canonical, name):
                    problems.append("unexpected 2xx: " + where)
                elif canonical in IN_BODY_VERDICT and b"status=OK" in text:
                    problems.append("unexpected OK verdict: " + where)
                need = required(canonical)
                if need != "public" and allowed(canonical, name):
                    # the harness check: the right credential does get past authentication
                    refused = status == 401 or (status == 403 and b"scope" in text)
                    if refused:
                        problems.append("right credential refused: " + where)
                    accepted += 200 <= status < 300
                    basic_ok += need == "basic" and 200 <= status < 300
    assert accepted >= 15  # the allowed callers did reach real data: the refusals above are meaningful
    assert basic_ok >= 1  # (the first challenge route; wrong passwords then lock this client out: 429)
    return problems


async def _methods(armed) -> list[str]:
    """A method a route does not serve: never a 5xx, and never a 2xx without the admin token (the path may
    still be served by another route, e.g. POST /api/v1/devices/{id}/certificate by /{id}/{action})."""
    routes = set(_routes(armed))
    creds = armed.credentials()
    problems, refused = [], 0
    async with armed.session() as session:
        for canonical in sorted({c for _, c in routes}):
            path = armed.route_path(canonical)
            for method in METHODS:
                if (method, canonical) in routes:
                    continue
                for name in ("none", "signin", "admin"):
                    status, text = await _send(session, armed, method, path, creds[name], b"{}")
                    refused += status == 405
                    if status >= 500 or (200 <= status < 300 and name != "admin" and required(canonical) != "public"):
                        problems.append(f"{method} {path} [{name}] -> {status} {text[:120]!r}")
    assert refused > 200
    return problems


def _variants(path: str) -> list[str]:
    first, _, rest = path.lstrip("/").partition("/")
    letters = "".join(f"%{ord(c):02X}" if c.isalpha() else c for c in path)
    out = [
        path + "/",                                      # trailing slash
        "/" + path,                                      # double slash
        path + "%2F",                                    # encoded trailing slash
        letters,                                         # every letter %-encoded
        "/" + first + "%2F" + rest,                      # the first separator %-encoded
        path.replace("/", "//"),                         # every separator doubled
        path + ";jsessionid=1",                          # a path parameter
        path + "%00",                                    # an encoded NUL
        path + "%0A",                                    # an encoded newline
        "/" + first + "/%2E/" + rest,                    # an encoded dot segment
        "/" + first + "/x/%2E%2E/" + rest,               # an encoded dot-dot segment
        path.upper(),                                    # case
    ]
    return [v for v in out if v != path]


async def _paths(armed) -> list[str]:
    """Trailing slash, doubled or %-encoded separators, %-encoded letters, dot segments: no 2xx without the
    right credential, no 5xx."""
    creds = armed.credentials()
    problems, tried = [], 0
    async with armed.session() as session:
        for method, canonical in _routes(armed):
            need = required(canonical)
            if need == "public":
                continue
            wrong = ["none", "signin" if need != "signin" else "admin"]
            for variant in _variants(armed.route_path(canonical)):
                for name in wrong:
                    body, ctype = body_for(armed, method, canonical)
                    status, text = await _send(session, armed, method, variant, {**creds[name], **ctype}, body)
                    tried += 1
                    if status >= 500 or 200 <= status < 300:
                        problems.append(f"{method} {variant} [{name}] -> {status} {text[:120]!r}")
    assert tried > 300
    return problems


async def test_route_credential_method_and_path_matrix(armed):
    """One server, three sweeps (each a few hundred requests): credentials, methods, paths written otherwise."""
    problems = await _credentials(armed) + await _methods(armed) + await _paths(armed)
    assert not problems, "\n".join(problems)
