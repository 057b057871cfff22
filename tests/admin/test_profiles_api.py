"""Profiles through the admin API (docs/api.md "Profiles"): create, show, list, update, delete, rotate."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography import x509

from scep_server.challenge.tables import challenges
from scep_server.profiles import ProfileStore
from scep_server.scep import PKIStatus
from scep_server.store.tables import events, scep_transactions
from tests.admin.conftest import call, is_admin_token
from tests.challenge.conftest import add_profile, dynamic, enrol
from tests.crlwiring.conftest import crl_serials
from tests.factories import rsa_key
from trustkit.db import create_engine

API = "/api/v1/profiles"


async def _create(session, server, admin, name="kiosk", **body):
    status, created, headers = await call(session, "POST", server.url + API, admin, json={"name": name, **body})
    assert status == 201, created
    return created, headers


async def test_static_profile_lifecycle(server, admin, session):
    created, headers = await _create(session, server, admin, settings={"template": {"validity_days": 30}})
    assert headers["Cache-Control"] == "no-store"
    assert headers["Location"] == f"{API}/kiosk"
    secret = created.pop("secret")
    assert created["challenge"] == "static" and created["settings"]["template"]["validity_days"] == 30
    assert created["url"].endswith("/scep/kiosk")

    status, shown, _ = await call(session, "GET", f"{server.url}{API}/kiosk", admin)
    assert status == 200 and shown == created  # the secret is shown once, never again
    assert "secret" not in shown and secret not in str(shown)

    rep = await enrol(session, server, "kiosk", rsa_key(), secret, cn="kiosk-1")
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    rep = await enrol(session, server, "kiosk", rsa_key(), "not-the-secret", cn="kiosk-2")
    assert rep.status is PKIStatus.FAILURE

    status, listed, _ = await call(session, "GET", f"{server.url}{API}", admin)
    assert status == 200 and [p["name"] for p in listed["profiles"]] == ["default", "kiosk"]
    assert listed["next_cursor"] is None and listed["next"] is None
    assert all("secret" not in p for p in listed["profiles"])


async def test_rotation_refuses_the_old_secret_at_once(server, admin, session):
    created, _ = await _create(session, server, admin)
    old = created["secret"]
    rep = await enrol(session, server, "kiosk", rsa_key(), old, cn="before")  # the profile is now cached
    assert rep.status is PKIStatus.SUCCESS

    status, rotated, headers = await call(session, "POST", f"{server.url}{API}/kiosk/rotate-secret", admin)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    new = rotated["secret"]
    assert new != old and rotated["name"] == "kiosk"
    assert (await enrol(session, server, "kiosk", rsa_key(), old, cn="old")).status is PKIStatus.FAILURE
    assert (await enrol(session, server, "kiosk", rsa_key(), new, cn="new")).status is PKIStatus.SUCCESS
    async with server.runtime.engine.connect() as conn:
        actor = (await conn.execute(sa.select(events.c.actor).where(
            events.c.kind == "pki.profile.rotate_secret", events.c.subject == "kiosk"))).scalar_one()
    assert is_admin_token(actor)


async def test_rotation_with_a_grace_period_keeps_the_old_secret_until_then(server, admin, session, clock):
    import structlog

    created, _ = await _create(session, server, admin)
    old = created["secret"]
    url = f"{server.url}{API}/kiosk/rotate-secret"
    for bad in ({"grace_seconds": 0}, {"grace_seconds": 31 * 86400}, {"grace_seconds": "1h"}, {"grace": 60}):
        status, body, _ = await call(session, "POST", url, admin, json=bad)
        assert status == 400, (bad, body)
    status, rotated, _ = await call(session, "POST", url, admin, json={"grace_seconds": 3600})
    assert status == 200, rotated
    new = rotated["secret"]
    assert rotated["previous_valid_until"] == (clock() + timedelta(hours=1)).isoformat()
    with structlog.testing.capture_logs() as logs:
        assert (await enrol(session, server, "kiosk", rsa_key(), old, cn="old-1")).status is PKIStatus.SUCCESS
    assert [e["profile"] for e in logs if e["event"] == "profile.previous_secret_used"] == ["kiosk"]
    assert (await enrol(session, server, "kiosk", rsa_key(), new, cn="new-1")).status is PKIStatus.SUCCESS
    assert (await enrol(session, server, "kiosk", rsa_key(), "neither", cn="x")).status is PKIStatus.FAILURE
    clock.advance(3601)  # the grace period is over
    assert (await enrol(session, server, "kiosk", rsa_key(), old, cn="old-2")).status is PKIStatus.FAILURE
    assert (await enrol(session, server, "kiosk", rsa_key(), new, cn="new-2")).status is PKIStatus.SUCCESS
    # a rotation without grace ends any grace at once
    status, _, _ = await call(session, "POST", url, admin, json={"grace_seconds": 600})
    status, again, _ = await call(session, "POST", url, admin)
    assert status == 200 and "previous_valid_until" not in again
    assert (await enrol(session, server, "kiosk", rsa_key(), new, cn="new-3")).status is PKIStatus.FAILURE


async def _rotated_elsewhere_refuses(server, session, old: str) -> None:
    """Another process (a second server, the command line) rotates the secret of "kiosk": the old one is refused
    at once, the new one enrols."""
    engine = create_engine(server.settings.database_url())
    try:
        new = await ProfileStore(engine).rotate_secret("kiosk", now=server.runtime.clock(), actor="cli")
    finally:
        await engine.dispose()
    assert (await enrol(session, server, "kiosk", rsa_key(), old, cn="old")).status is PKIStatus.FAILURE
    assert (await enrol(session, server, "kiosk", rsa_key(), new, cn="new")).status is PKIStatus.SUCCESS


async def test_rotation_by_another_process_is_seen_at_once(server, admin, session):
    """Another process (a second server, the command line) rotates: this server's cached profile does not keep
    the old secret working."""
    created, _ = await _create(session, server, admin)
    old = created["secret"]
    assert (await enrol(session, server, "kiosk", rsa_key(), old, cn="warm")).status is PKIStatus.SUCCESS
    await _rotated_elsewhere_refuses(server, session, old)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_on_sqlite_the_secret_is_read_in_the_decryption_stage(server, admin, session, monkeypatch):
    """On SQLite the enrolment's worker thread reads the secret as stored with its transaction lookup: no query
    of its own on the event loop, and a rotation by another process is still refused at once."""
    created, _ = await _create(session, server, admin)
    old = created["secret"]

    async def not_here(self, name, challenge):
        raise AssertionError("the secret was read again on the event loop")

    monkeypatch.setattr(ProfileStore, "static_secret_ok", not_here)
    assert (await enrol(session, server, "kiosk", rsa_key(), old, cn="one")).status is PKIStatus.SUCCESS
    assert (await enrol(session, server, "kiosk", rsa_key(), "wrong", cn="two")).status is PKIStatus.FAILURE
    await _rotated_elsewhere_refuses(server, session, old)


async def test_rotate_needs_a_static_profile(server, admin, session):
    await add_profile(server, "dyn", "dynamic", dynamic())
    status, body, _ = await call(session, "POST", f"{server.url}{API}/dyn/rotate-secret", admin)
    assert status == 409 and body["code"] == "not_static"
    status, body, _ = await call(session, "POST", f"{server.url}{API}/nope/rotate-secret", admin)
    assert status == 404 and body["code"] == "profile_not_found"


async def test_patch_merges_and_validates(server, admin, session):
    await _create(session, server, admin, settings={"template": {"validity_days": 30, "san_types": ["dns"]}})
    url = f"{server.url}{API}/kiosk"
    status, body, _ = await call(session, "PATCH", url, admin, json={"settings": {"template": {"validity_days": 7},
                                                                                  "require_approval": True}})
    assert status == 200, body
    assert body["settings"]["template"]["validity_days"] == 7
    assert body["settings"]["template"]["san_types"] == ["dns"]  # a merge patch keeps what it does not name
    assert body["settings"]["require_approval"] is True
    status, body, _ = await call(session, "PATCH", url, admin, json={"settings": {"require_approval": None}})
    assert status == 200 and body["settings"]["require_approval"] is False  # null: back to the default
    assert (await server.runtime.profiles.get("kiosk")).settings.template.validity_days == 7

    for patch, field in [({"template": {"validity_days": 0}}, "settings.template.validity_days"),
                         ({"template": {"validity_days": "soon"}}, "settings.template.validity_days"),
                         ({"template": {"no_such_key": 1}}, "settings.template.no_such_key"),
                         ({"no_such_setting": 1}, "settings.no_such_setting"),
                         ({"renewal_window_days": -1}, "settings.renewal_window_days"),
                         ({"challenge": {"credentials": {}}}, "settings.challenge")]:
        status, body, _ = await call(session, "PATCH", url, admin, json={"settings": patch})
        assert status == 422, (patch, body)
        assert body["code"] == "invalid_settings" and body["field"] == field, body
        assert field in body["detail"]
    assert (await server.runtime.profiles.get("kiosk")).settings.template.validity_days == 7  # nothing changed

    for bad in [{}, {"settings": []}, {"settings": "x"}, {"settings": {}, "name": "other"}]:
        status, body, _ = await call(session, "PATCH", url, admin, json=bad)
        assert status == 400 and body["code"] == "invalid_input", (bad, body)
    status, body, _ = await call(session, "PATCH", f"{server.url}{API}/nope", admin, json={"settings": {}})
    assert status == 404


async def test_delegated_profiles_cannot_require_approval(server, admin, session):
    status, body, _ = await call(session, "POST", server.url + API, admin, json={
        "name": "intune", "challenge": "delegated", "settings": {"require_approval": True}})
    assert status == 422 and body["field"] == "settings.require_approval"
    status, body, _ = await call(session, "POST", server.url + API, admin, json={"name": "intune",
                                                                                 "challenge": "delegated"})
    assert status == 201 and "secret" not in body
    status, body, _ = await call(session, "PATCH", f"{server.url}{API}/intune", admin,
                                 json={"settings": {"require_approval": True}})
    assert status == 422 and body["field"] == "settings.require_approval"


async def test_hostile_create_bodies(server, admin, session):
    url = server.url + API
    await _create(session, server, admin)
    cases = [
        ({"name": "kiosk"}, 409, "profile_exists"),
        ({"name": "a/b"}, 422, "invalid_profile"),
        ({"name": "x" * 65}, 422, "invalid_profile"),
        ({"name": "ok\n"}, 422, "invalid_profile"),
        ({"name": "ok", "challenge": "magic"}, 422, "invalid_profile"),
        ({"name": "ok", "challenge": ["static"]}, 422, "invalid_profile"),
        ({"name": "ok", "settings": {"template": {"validity_days": 99999}}}, 422, "invalid_settings"),
        ({"name": "ok", "settings": {"challenge": {"x": 1}}}, 422, "invalid_settings"),
        ({"name": 5}, 400, "invalid_input"),
        ({}, 400, "invalid_input"),
        ({"name": "ok", "settings": [1]}, 400, "invalid_input"),
        ({"name": "ok", "secret": "mine"}, 400, "invalid_input"),
    ]
    for body, want, code in cases:
        status, answer, _ = await call(session, "POST", url, admin, json=body)
        assert (status, answer["code"]) == (want, code), (body, answer)
    for raw in [b"", b"[]", b"{", b'{"name": "a", "name": "b"}', b'{"name": "\\u0000"}', b"\xff"]:
        status, answer, headers = await call(session, "POST", url, admin, data=raw,
                                             headers={"Content-Type": "application/json"})
        assert status == 400 and headers["Content-Type"].startswith("application/problem+json"), (raw, answer)
    status, body, _ = await call(session, "GET", url, None)
    assert status == 401
    _, signin = await server.runtime.tokens.create(scope="signin", name="s", now=server.runtime.clock())
    status, body, _ = await call(session, "POST", url, signin, json={"name": "ok"})
    assert status == 403
    status, listed, _ = await call(session, "GET", url, admin)
    assert [p["name"] for p in listed["profiles"]] == ["default", "kiosk"]  # nothing was made


async def test_list_pages_by_name(server, admin, session):
    for name in ("b", "a", "c"):
        await _create(session, server, admin, name=name)
    status, first, headers = await call(session, "GET", f"{server.url}{API}?limit=2", admin)
    assert status == 200 and [p["name"] for p in first["profiles"]] == ["a", "b"]
    assert headers["Link"] == f'<{first["next"]}>; rel="next"'
    status, second, headers = await call(session, "GET", server.url + first["next"], admin)
    assert [p["name"] for p in second["profiles"]] == ["c", "default"] and second["next_cursor"] is None
    assert "Link" not in headers
    for query in ("limit=0", "limit=x", "cursor=!!"):
        status, body, _ = await call(session, "GET", f"{server.url}{API}?{query}", admin)
        assert status == 400, body


async def test_delete_refused_while_certificates_live_then_forced(server, admin, session):
    created, _ = await _create(session, server, admin, settings={"require_approval": True})
    secret = created["secret"]
    url = f"{server.url}{API}/kiosk"
    rt = server.runtime
    # one certificate issued (approved), one enrolment left pending
    key = rsa_key()
    rep = await enrol(session, server, "kiosk", key, secret, cn="issued")
    assert rep.status is PKIStatus.PENDING
    serial = await rt.scep.decide("kiosk", rep.transaction_id, approve=True, actor="test")
    assert (await enrol(session, server, "kiosk", rsa_key(), secret, cn="waiting")).status is PKIStatus.PENDING

    status, body, _ = await call(session, "DELETE", url, admin)
    assert status == 409 and body["code"] == "profile_in_use" and body["certificates"] == 1
    status, body, _ = await call(session, "DELETE", url + "?force=yes", admin)
    assert status == 400
    status, body, _ = await call(session, "DELETE", url + "?force=true", admin)
    assert status == 200 and body == {"deleted": "kiosk", "certificates": 1, "rejected_enrolments": 1}

    assert (await call(session, "GET", url, admin))[0] == 404
    assert (await call(session, "DELETE", url, admin))[0] == 404
    async with session.get(f"{server.url}/scep/kiosk?operation=GetCACaps") as resp:
        assert resp.status == 404
    async with rt.engine.connect() as conn:
        states = (await conn.execute(sa.select(scep_transactions.c.state).where(
            scep_transactions.c.profile == "kiosk"))).scalars().all()
        event = (await conn.execute(sa.select(events.c.actor, events.c.data).where(
            events.c.kind == "pki.profile.delete"))).one()
    assert sorted(states) == ["issued", "rejected"]
    assert is_admin_token(event.actor) and '"force": true' in event.data

    # its certificate stays revocable, and is listed on the CRL once revoked
    record = await rt.revocation.revoke(serial, actor="test")
    assert record.status == "revoked" and record.profile == "kiosk"
    await rt.crl.flush()
    async with session.get(f"{server.url}/crl/{rt.settings.ca.name}.crl") as resp:
        crl = await resp.read()
    assert int(serial, 16) in crl_serials(crl)


async def test_delete_without_live_certificates_drops_its_challenges(server, admin, session):
    await add_profile(server, "dyn", "dynamic", dynamic())
    issued = await server.runtime.challenges.new_challenge("dyn", source="api", requested_by="test")
    assert issued.challenge
    status, body, _ = await call(session, "DELETE", f"{server.url}{API}/dyn", admin)
    assert status == 200 and body == {"deleted": "dyn", "certificates": 0, "rejected_enrolments": 0}
    async with server.runtime.engine.connect() as conn:
        left = (await conn.execute(sa.select(sa.func.count()).select_from(challenges).where(
            challenges.c.profile == "dyn"))).scalar_one()
    assert left == 0


async def test_deleted_static_profile_refuses_its_secret_at_once(server, admin, session):
    """A server that cached the profile does not go on accepting its secret once it is deleted."""
    created, _ = await _create(session, server, admin)
    assert (await enrol(session, server, "kiosk", rsa_key(), created["secret"], cn="warm")).status \
        is PKIStatus.SUCCESS
    engine = create_engine(server.settings.database_url())
    try:
        await ProfileStore(engine).delete("kiosk", now=server.runtime.clock(), force=True, actor="cli")
    finally:
        await engine.dispose()
    rep = await enrol(session, server, "kiosk", rsa_key(), created["secret"], cn="after")
    assert rep.status is PKIStatus.FAILURE
    assert not [c for c in rep.certs if x509.load_der_x509_certificate(c)]


async def test_challenge_settings_stay_on_the_server_host(server, admin, session):
    """The challenge's settings name server files and environment variables whose contents go to the hosts
    they name: the API neither sets them nor shows the Basic password's hash."""
    await add_profile(server, "dyn", "dynamic", dynamic())
    status, shown, _ = await call(session, "GET", f"{server.url}{API}/dyn", admin)
    assert status == 200 and shown["settings"]["challenge"]["credentials"] == {"username": "jamf-scep",
                                                                              "password_hash": "(set)"}
    status, listed, _ = await call(session, "GET", server.url + API, admin)
    assert "scrypt$" not in str(listed)
    exfiltrate = {"provider": "intune", "intune": {"tenant": "t", "client_id": "c",
                                                   "authority_url": "https://attacker.example",
                                                   "client_secret": {"file": "/etc/passwd"}}}
    status, body, _ = await call(session, "POST", server.url + API, admin, json={
        "name": "mdm", "challenge": "delegated", "settings": {"challenge": exfiltrate}})
    assert status == 422 and body["field"] == "settings.challenge"
    status, body, _ = await call(session, "POST", server.url + API, admin, json={"name": "mdm",
                                                                                 "challenge": "delegated"})
    assert status == 201
    status, body, _ = await call(session, "PATCH", f"{server.url}{API}/mdm", admin,
                                 json={"settings": {"challenge": exfiltrate}})
    assert status == 422 and body["field"] == "settings.challenge"
    status, body, _ = await call(session, "PATCH", f"{server.url}{API}/dyn", admin,
                                 json={"settings": {"require_approval": True}})
    assert status == 200  # the other settings of a profile with a challenge change as usual
    stored = await server.runtime.profiles.get("dyn")
    assert stored.settings.challenge["credentials"]["password_hash"].startswith("scrypt$")
    assert (await server.runtime.profiles.get("mdm")).settings.challenge == {}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_rotation_at_once_is_not_undone_by_a_graceful_one_in_flight(engine, monkeypatch, tmp_path):
    """A leaked secret is rotated without grace while another rotation, with grace, has read the profile: the
    second waits for the first's row lock and keeps the first's new secret as the previous one, never the
    leaked one (on SQLite the writer's lock on the database orders them the same way)."""
    import asyncio

    import scep_server.profiles as profiles_mod
    from tests.factories import NOW, make_ca, register_ca
    from trustkit.clock import utcnow

    ca = make_ca(tmp_path)
    await register_ca(engine, ca)
    store = ProfileStore(engine)
    await store.create("corp", ca=ca.name, challenge_kind="static", static_secret="leaked-secret-0", now=NOW)
    real_writer = profiles_mod.writer
    read, go = asyncio.Event(), asyncio.Event()

    class Paused:  # the graceful rotation's transaction stops after its first statement (the read)
        def __init__(self, conn):
            self.conn, self.first = conn, True

        async def execute(self, *args, **kwargs):
            result = await self.conn.execute(*args, **kwargs)
            if self.first:
                self.first = False
                read.set()
                await go.wait()
            return result

    class Begin:
        def __init__(self, cm):
            self.cm = cm

        async def __aenter__(self):
            return Paused(await self.cm.__aenter__())

        async def __aexit__(self, *exc):
            return await self.cm.__aexit__(*exc)

    class PausedWriter:
        def begin(self):
            return Begin(real_writer(engine).begin())

    monkeypatch.setattr(profiles_mod, "writer", lambda e: PausedWriter())
    graceful = asyncio.create_task(store.rotate_secret("corp", now=utcnow(), grace=timedelta(days=30)))
    await read.wait()
    monkeypatch.setattr(profiles_mod, "writer", real_writer)
    at_once = asyncio.create_task(store.rotate_secret("corp", now=utcnow()))
    await asyncio.sleep(0.3)
    go.set()
    await graceful
    await at_once
    assert not await store.static_secret_ok("corp", "leaked-secret-0")
