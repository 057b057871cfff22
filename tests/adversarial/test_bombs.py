"""Hostile bodies, queries and path values on every route, with the right credential: never a 5xx.

A JSON route refuses a body that is not one plain JSON object (too deep, a repeated key, NaN, a number
beyond range, invalid UTF-8, a NUL or an unpaired surrogate in a string) with a 4xx. Runs on SQLite and
PostgreSQL: PostgreSQL refuses a NUL in text, which SQLite stores.
"""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from .routes import NOT_JSON, RIGHT, body_for, json_fields, required

BODY_METHODS = ("POST", "DELETE")

# Bodies that are not one plain JSON object: a JSON route answers each with a 4xx.
MALFORMED = {
    "deep-array": b"[" * 20_000 + b"]" * 20_000,
    "deep-object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "truncated": b'{"name": ',
    "not-json": b"\x00\x01\x02",
    "array": b"[]",
    "string": b'"x"',
    "null": b"null",
    "invalid-utf8": b'{"name": "\xff\xfe\xfd"}',
    "duplicate-keys": b'{"name": "a", "name": "b"}',
    "nan": b'{"name": NaN}',
    "infinity": b'{"name": -Infinity}',
}
# Values put in place of each field of a route's valid body: the malformed ones make a 4xx on a JSON
# route, the others only must not make a 5xx.
MALFORMED_VALUES = {
    "deep-value": "[" * 50 + "1" + "]" * 50,
    "deeper-than-the-parser": "[" * 5000 + "]" * 5000,
    "huge-int": "9" * 20_000,
    "huge-float": "1e999999",
    "nul": '"a\\u0000b"',
    "lone-surrogate": '"\\ud800"',
    "reversed-surrogates": '"\\udc00\\ud800"',
}
WRONG_VALUES = {
    "int": "1", "big-int": str(2 ** 70), "float": "1.5", "true": "true", "null": "null", "list": '["x"]',
    "object": '{"a": "b"}', "empty-string": '""', "newline": '"x\\n"', "unicode-digits": '"\\u00b2\\u0661"',
}
CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/json; charset=utf-16", "application/octet-stream")


def _with(fields: dict, key: str, raw_value: str) -> bytes:
    """The route's body with one field's value replaced by a raw JSON text."""
    marker = "\x01marker\x01"
    text = json.dumps({**fields, key: marker})
    return text.replace(json.dumps(marker), raw_value).encode()


def _targets(armed):
    for route in armed.srv.app.router.routes():
        if route.method in BODY_METHODS:
            yield route.method, route.resource.canonical


async def _post(session, armed, method, canonical, body: bytes, headers: dict) -> tuple[int, bytes]:
    path = armed.route_path(canonical)
    async with session.request(method, armed.raw_url(path), data=body, headers=headers) as resp:
        return resp.status, (await resp.read())[:300]


async def test_json_bombs_on_every_body_route(armed):
    creds = armed.credentials()
    problems, sent = [], 0
    async with armed.session() as session:
        for method, canonical in sorted(set(_targets(armed))):
            need = required(canonical)
            auth = creds[RIGHT[need]] if need != "public" else {}
            is_json = canonical not in NOT_JSON
            ctype = {"Content-Type": "application/json"}
            fields = json_fields(armed, canonical) if is_json else {"name": "x"}

            cases: list[tuple[str, bytes, bool]] = [(f"body:{n}", b, True) for n, b in MALFORMED.items()]
            cases.append(("huge-strings", json.dumps({k: "x" * 60_000 for k in [*fields, "x"]}).encode(), False))
            for key in fields or {"name": "x"}:
                cases += [(f"{key}:{n}", _with(fields, key, v), True) for n, v in MALFORMED_VALUES.items()]
                cases += [(f"{key}:{n}", _with(fields, key, v), False) for n, v in WRONG_VALUES.items()]
            cases += [(f"{key}:nested", _with(fields, key, v), False)
                      for key in fields for v in ('{"x": {"y": [1, {"z": null}]}}',)]
            answers = await asyncio.gather(*(_post(session, armed, method, canonical, body, {**auth, **ctype})
                                             for _, body, _ in cases))
            for (name, _body, must_refuse), (status, text) in zip(cases, answers):
                sent += 1
                where = f"{method} {canonical} {name} -> {status} {text[:160]!r}"
                if status >= 500:
                    problems.append("5xx: " + where)
                elif is_json and must_refuse and not 400 <= status < 500:
                    problems.append("accepted: " + where)
            valid, _ = body_for(armed, method, canonical)
            for content_type in CONTENT_TYPES:
                status, text = await _post(session, armed, method, canonical, valid or b"{}",
                                           {**auth, "Content-Type": content_type})
                sent += 1
                if status >= 500:
                    problems.append(f"5xx: {method} {canonical} content-type {content_type} -> {status} {text!r}")
    assert sent > 500
    assert not problems, "\n".join(problems)


QUERIES = [
    "status=%FF&state=%00&format=%0A&profile=%C0%AF",
    "since=99999999999999999999&until=-1&limit=-5&history=%FF&id=%C2%B2",
    "status=active&status=deleted&format=json&format=csv",
    "operation=GetCACert&message=%FF%FE" + "A" * 4000,
    "operation=PKIOperation&message=" + "%25" * 2000,
    "x=" + "y" * 6000,
]


async def _queries(armed, session, queries) -> list[str]:
    creds = armed.credentials()
    problems = []
    for route in armed.srv.app.router.routes():
        if route.method != "GET":
            continue
        need = required(route.resource.canonical)
        auth = creds[RIGHT[need]] if need != "public" else {}
        for query in queries:
            path = armed.route_path(route.resource.canonical) + "?" + query
            async with session.get(armed.raw_url(path), headers=auth) as resp:
                if resp.status >= 500:
                    problems.append(f"GET {path[:200]} -> {resp.status} {(await resp.read())[:200]!r}")
    return problems


PATH_VALUES = ["%C2%B2", "%D9%A1%D9%A2", "%EF%BC%91", "9" * 5000, "-1", "0", "1_0", "+1", "%00", "x%0A",
               "%0A", "..", "%2E%2E", "a" * 3000, "%FF", "%ED%A0%80", "1e3", "%201"]


async def _path_values(armed, session, placeholders, values) -> list[str]:
    creds = armed.credentials()
    problems = []
    for route in armed.srv.app.router.routes():
        canonical = route.resource.canonical
        for placeholder in placeholders:
            if "{" + placeholder + "}" not in canonical:
                continue
            need = required(canonical)
            auth = creds[RIGHT[need]] if need != "public" else {}
            for value in values:
                path = armed.route_path(canonical.replace("{" + placeholder + "}", value))
                async with session.request(route.method, armed.raw_url(path), headers=auth,
                                           data=body_for(armed, route.method, canonical)[0]) as resp:
                    if resp.status >= 500:
                        problems.append(f"{route.method} {path[:120]} -> {resp.status} {(await resp.read())[:200]!r}")
    return problems


def _placeholders(armed) -> set[str]:
    return {p for r in armed.srv.app.router.routes() for p in re.findall(r"\{(\w+)\}", r.resource.canonical)}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_garbage_queries_and_hostile_path_values(armed):
    """Garbage in every query of every GET route, and Unicode digits, huge numbers, NUL, newline, dot
    segments, long values in every path parameter, with the right credential: never a 5xx."""
    placeholders = _placeholders(armed)
    assert {"profile", "ca", "device_id", "id"} <= placeholders
    async with armed.session() as session:
        problems = await _queries(armed, session, QUERIES)
        problems += await _path_values(armed, session, sorted(placeholders), PATH_VALUES)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_yubikey_serials_of_unicode_digits_are_a_400(armed):
    async with armed.session() as session:  # one 500 is enough: stop at the first
        assert not await _path_values(armed, session, ["serial"], ["%C2%B2"])
        assert not await _path_values(armed, session, ["serial"], ["9" * 5000])
        assert not await _queries(armed, session, ["serial=%C2%B2"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_broken_multipart_import_is_a_400(armed):
    headers = {"Authorization": "Bearer " + armed.admin}
    async with armed.session() as session:
        for ctype, body in [("multipart/form-data; boundary=x", b"not multipart"),
                            ("multipart/form-data", b"--x\r\n"),
                            ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n")]:
            async with session.post(armed.raw_url("/api/v1/yubikeys/import"), data=body,
                                    headers={**headers, "Content-Type": ctype}) as resp:
                assert resp.status < 500, (ctype, body, resp.status)
