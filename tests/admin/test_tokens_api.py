"""API tokens through the admin API (docs/api.md "Authentication"): create, list, disable, expiry, last use."""
from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import sqlalchemy as sa

from scep_server.store.tables import api_tokens, events
from scep_server.tokens import TokenStore
from tests.admin.conftest import call, is_admin_token
from trustkit.db import create_engine

API = "/api/v1/tokens"
FIELDS = {"id", "name", "scope", "created_at", "expires_at", "disabled_at", "last_used_at"}


async def _row(server, token_id: str):
    async with server.runtime.engine.connect() as conn:
        return (await conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id))).one()


async def test_create_list_disable(server, admin, session):
    server.runtime.clock.advance(1)  # created after the admin token (the list is oldest first)
    status, made, headers = await call(session, "POST", server.url + API, admin,
                                       json={"scope": "admin", "name": "deploy bot"})
    assert status == 201 and headers["Cache-Control"] == "no-store"
    secret = made.pop("token")
    assert set(made) == FIELDS and made["scope"] == "admin" and made["name"] == "deploy bot"
    assert made["expires_at"] is None and made["disabled_at"] is None
    assert secret.startswith("dt_admin_")

    # the new token works; creating it was an audit event naming the caller
    status, listed, _ = await call(session, "GET", server.url + API, secret)
    assert status == 200
    assert [t["name"] for t in listed["tokens"]] == ["admin-tests", "deploy bot"]
    for t in listed["tokens"]:
        assert set(t) == FIELDS
    assert secret not in json.dumps(listed) and "sha256" not in json.dumps(listed)
    async with server.runtime.engine.connect() as conn:
        event = (await conn.execute(sa.select(events).where(events.c.kind == "security.token.create"))).one()
    assert is_admin_token(event.actor) and event.subject == made["id"]
    assert json.loads(event.data)["scope"] == "admin" and secret not in event.data

    status, disabled, _ = await call(session, "POST", f"{server.url}{API}/{made['id']}/disable", admin)
    assert status == 200 and disabled["disabled_at"] is not None and disabled["id"] == made["id"]
    status, body, headers = await call(session, "GET", server.url + API, secret)  # refused at once here
    assert status == 401 and headers["WWW-Authenticate"].startswith('Bearer realm="device-trust"')
    status, again, _ = await call(session, "POST", f"{server.url}{API}/{made['id']}/disable", admin)
    assert status == 200 and again["disabled_at"] == disabled["disabled_at"]  # disabling twice changes nothing


async def test_list_pages(server, admin, session):
    rt = server.runtime
    for i in range(3):
        rt.clock.advance(1)
        await rt.tokens.create(scope="signin", name=f"t{i}", now=rt.clock())
    status, first, headers = await call(session, "GET", f"{server.url}{API}?limit=3", admin)
    assert [t["name"] for t in first["tokens"]] == ["admin-tests", "t0", "t1"] and "Link" in headers
    status, second, _ = await call(session, "GET", server.url + first["next"], admin)
    assert [t["name"] for t in second["tokens"]] == ["t2"] and second["next"] is None
    status, body, _ = await call(session, "GET", f"{server.url}{API}?cursor=WyJ4Il0", admin)
    assert status == 400 and body["code"] == "invalid_cursor"


async def test_a_token_may_disable_itself(server, admin, session):
    status, listed, _ = await call(session, "GET", server.url + API, admin)
    own = listed["tokens"][0]["id"]
    status, body, _ = await call(session, "POST", f"{server.url}{API}/{own}/disable", admin)
    assert status == 200 and body["disabled_at"] is not None
    assert (await call(session, "GET", server.url + API, admin))[0] == 401


async def test_expiry_is_enforced_at_once(server, admin, session):
    rt = server.runtime
    expires = rt.clock() + timedelta(minutes=1)
    status, made, _ = await call(session, "POST", server.url + API, admin,
                                 json={"scope": "admin", "name": "short", "expires_at": expires.isoformat()})
    assert status == 201 and made["expires_at"] == expires.isoformat()
    token = made["token"]
    assert (await call(session, "GET", server.url + API, token))[0] == 200  # now cached
    rt.clock.advance(59)
    assert (await call(session, "GET", server.url + API, token))[0] == 200
    rt.clock.advance(1)
    status, body, _ = await call(session, "GET", server.url + API, token)
    assert status == 401 and body["code"] == "unauthorized"


async def test_disabled_elsewhere_is_refused_within_the_cache_period(server, admin, session, monkeypatch):
    """Another process (the command line) disables a token this server has cached: refused once the cache
    period has passed (5 s; shortened here)."""
    rt = server.runtime
    monkeypatch.setattr(rt.tokens, "_ttl", 0.5)
    token_id, token = await rt.tokens.create(scope="admin", name="elsewhere", now=rt.clock())
    assert (await call(session, "GET", server.url + API, token))[0] == 200
    engine = create_engine(server.settings.database_url())
    try:
        assert await TokenStore(engine).disable(token_id, now=rt.clock(), actor="cli")
    finally:
        await engine.dispose()
    await asyncio.sleep(0.6)
    assert (await call(session, "GET", server.url + API, token))[0] == 401


async def test_last_used_is_written_at_most_once_a_minute(server, admin, session, monkeypatch):
    rt = server.runtime
    token_id, token = await rt.tokens.create(scope="admin", name="used", now=rt.clock())
    assert (await _row(server, token_id)).last_used_at is None
    first_use = rt.clock()
    assert (await call(session, "GET", server.url + API, token))[0] == 200
    for _ in range(500):  # written by a task after the answer (bounded: 10 s)
        if (await _row(server, token_id)).last_used_at is not None:
            break
        await asyncio.sleep(0.02)
    assert (await _row(server, token_id)).last_used_at.replace(tzinfo=None) == first_use.replace(tzinfo=None)

    writes = []
    real = rt.tokens._write_uses

    async def counting():
        writes.append(dict(rt.tokens._unwritten))
        await real()

    monkeypatch.setattr(rt.tokens, "_write_uses", counting)
    rt.clock.advance(10)
    for _ in range(5):
        assert (await call(session, "GET", server.url + API, token))[0] == 200
    await asyncio.sleep(0.1)
    assert not any(token_id in w for w in writes)  # within the minute: no write for this token
    assert (await _row(server, token_id)).last_used_at.replace(tzinfo=None) == first_use.replace(tzinfo=None)

    monkeypatch.setattr(rt.tokens, "_last_used_every", 0.0)  # the minute has passed
    assert (await call(session, "GET", server.url + API, token))[0] == 200
    await rt.tokens.close()
    assert (await _row(server, token_id)).last_used_at.replace(tzinfo=None) == rt.clock().replace(tzinfo=None)
    status, listed, _ = await call(session, "GET", server.url + API, admin)
    [view] = [t for t in listed["tokens"] if t["id"] == token_id]
    assert view["last_used_at"] is not None


async def test_hostile_bodies(server, admin, session):
    url = server.url + API
    past = (server.runtime.clock() - timedelta(seconds=1)).isoformat()
    cases = [
        ({"scope": "root"}, 422, "invalid_token_request"),
        ({"scope": "admin", "expires_at": past}, 422, "invalid_token_request"),
        ({"scope": "admin", "name": "x" * 256}, 422, "invalid_token_request"),
        ({"scope": "admin", "expires_at": "9999-12-31T23:59:59-14:00"}, 422, "invalid_token_request"),
        ({}, 400, "invalid_input"),
        ({"scope": ["admin"]}, 400, "invalid_input"),
        ({"scope": "admin", "name": 3}, 400, "invalid_input"),
        ({"scope": "admin", "expires_at": "2030-01-01T00:00:00"}, 400, "invalid_input"),  # no offset
        ({"scope": "admin", "expires_at": "tomorrow"}, 400, "invalid_input"),
        ({"scope": "admin", "expires_at": 1893456000}, 400, "invalid_input"),
        ({"scope": "admin", "token": "dt_admin_mine"}, 400, "invalid_input"),
    ]
    for body, want, code in cases:
        status, answer, _ = await call(session, "POST", url, admin, json=body)
        assert (status, answer["code"]) == (want, code), (body, answer)
    status, body, _ = await call(session, "POST", f"{url}/nope/disable", admin)
    assert status == 404 and body["code"] == "token_not_found"
    status, body, _ = await call(session, "POST", f"{url}/{'a' * 300}/disable", admin)
    assert status == 404
    status, listed, _ = await call(session, "GET", url, admin)
    assert len(listed["tokens"]) == 1  # nothing was made
    _, signin = await server.runtime.tokens.create(scope="signin", name="s", now=server.runtime.clock())
    assert (await call(session, "POST", url, signin, json={"scope": "admin"}))[0] == 403
    assert (await call(session, "GET", url, None))[0] == 401


async def test_rotate_gives_a_new_secret_and_refuses_the_old_one(server, admin, session):
    rt = server.runtime
    token_id, old = await rt.tokens.create(scope="signin", name="sso", now=rt.clock())
    assert await rt.tokens.identify(old) == ("signin", token_id, "sso")
    status, body, headers = await call(session, "POST", f"{server.url}{API}/{token_id}/rotate", admin)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    new = body.pop("token")
    assert set(body) == FIELDS and body["id"] == token_id and body["scope"] == "signin" and body["name"] == "sso"
    assert new.startswith("dt_signin_") and new != old
    assert await rt.tokens.identify(old) is None  # refused at once by the process that rotated it
    assert await rt.tokens.identify(new) == ("signin", token_id, "sso")
    # another process's cache forgets the old secret within its cache time
    engine = create_engine(server.settings.database_url())
    other = TokenStore(engine, cache_seconds=0)
    try:
        assert await other.identify(old) is None and (await other.identify(new))[1] == token_id
    finally:
        await other.close()
        await engine.dispose()
    async with rt.engine.connect() as conn:
        event = (await conn.execute(sa.select(events).where(events.c.kind == "security.token.rotate"))).one()
    assert event.subject == token_id and is_admin_token(event.actor)

    status, problem, _ = await call(session, "POST", f"{server.url}{API}/nope/rotate", admin)
    assert status == 404
    await rt.tokens.disable(token_id, now=rt.clock())
    status, problem, _ = await call(session, "POST", f"{server.url}{API}/{token_id}/rotate", admin)
    assert status == 422 and problem["code"] == "invalid_token_request"
    status, _, _ = await call(session, "POST", f"{server.url}{API}/{token_id}/rotate", admin, json={"x": 1})
    assert status == 400


class _Conn:
    def __init__(self, cm, read, gate):
        self.cm, self.read, self.gate = cm, read, gate

    async def __aenter__(self):
        conn = await self.cm.__aenter__()
        read, gate = self.read, self.gate

        class Wrapped:
            async def execute(self, *a, **kw):
                result = await conn.execute(*a, **kw)
                read.set()          # the row is read (token still enabled) ...
                await gate.wait()   # ... and the request is descheduled before it fills the cache
                return result
        return Wrapped()

    async def __aexit__(self, *exc):
        return await self.cm.__aexit__(*exc)


class SlowReads:
    """The engine, with reads that pause after their SELECT (a busy event loop, a slow database)."""

    def __init__(self, real):
        self.real, self.read, self.gate, self.slow = real, asyncio.Event(), asyncio.Event(), True

    @property
    def dialect(self):
        return self.real.dialect

    def execution_options(self, **kw):
        return self.real.execution_options(**kw)

    def begin(self):
        return self.real.begin()

    def connect(self):
        if self.slow:
            self.slow = False
            return _Conn(self.real.connect(), self.read, self.gate)
        return self.real.connect()


async def test_a_token_disabled_here_is_refused_at_once_even_with_a_lookup_in_flight(engine):
    """A lookup that read the token's row before the disable committed does not cache its stale grant: the
    disabling process refuses the token at once (docs/api.md), the request in flight aside."""
    from trustkit.clock import utcnow

    slow = SlowReads(engine)
    store = TokenStore(slow, cache_seconds=5.0)
    token_id, secret = await store.create(scope="admin", name="stolen", now=utcnow())
    in_flight = asyncio.create_task(store.identify(secret))   # a request authenticating with the token
    await slow.read.wait()
    assert await store.disable(token_id, now=utcnow())        # the admin disables it, in this process
    slow.gate.set()
    await in_flight                                           # the request in flight may finish; but then:
    assert await store.identify(secret) is None, "the disabled token is accepted again by the disabling process"
    await store.close()
