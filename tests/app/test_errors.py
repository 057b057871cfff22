"""How the application answers failures (docs/api.md "Errors") and refuses callers (docs/api.md
"Authentication"): one middleware, one problem format, 503 for an unavailable database on every path."""
from __future__ import annotations

import aiohttp
import pytest
import structlog
from aiohttp import web
from sqlalchemy import exc as sa_exc

from scep_server.binding.errors import ChangedConcurrently
from scep_server.binding.service import services as binding_services
from scep_server.web.auth import REALM
from scep_server.web.errors import errors
from tests.factories import NOW
from tests.server import start_app
from trustkit.http import text_errors
from trustkit.problems import Conflict, NotFound

PROBLEM = "application/problem+json"


def _down() -> Exception:
    return sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError(111, "password=hunter2 refused"))


@pytest.fixture
async def mini(aiohttp_client):
    async def raising(request):
        raise {"domain": NotFound("no such thing", code="thing_not_found"), "down": _down(),
               "bug": RuntimeError("secret=hunter2"), "body": web.RequestPayloadError("bad chunk"),
               "http": web.HTTPNotFound(text="plain\n")}[request.match_info["kind"]]

    app = web.Application(middlewares=[errors])
    app.router.add_get("/api/{kind}", raising)
    @text_errors
    async def protocol(request):
        return await raising(request)

    app.router.add_get("/proto/{kind}", protocol)
    return await aiohttp_client(app)


async def test_domain_errors_are_problems_on_every_route(mini):
    for prefix in ("/api", "/proto"):
        resp = await mini.get(prefix + "/domain")
        assert resp.status == 404 and resp.content_type == PROBLEM
        assert await resp.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                                     "detail": "no such thing", "code": "thing_not_found"}


async def test_an_unavailable_database_is_503_with_retry_after_on_every_route(mini):
    for prefix in ("/api", "/proto"):
        with structlog.testing.capture_logs() as logs:
            resp = await mini.get(prefix + "/down")
        text = await resp.text()
        assert resp.status == 503 and resp.content_type == PROBLEM and resp.headers["Retry-After"] == "5"
        assert "hunter2" not in text and '"code": "unavailable"' in text
        assert [e["event"] for e in logs] == ["http.database_unavailable"]


async def test_anything_else_is_a_500_that_leaks_nothing(mini):
    with structlog.testing.capture_logs() as logs:
        api = await mini.get("/api/bug")
        proto = await mini.get("/proto/bug")
    assert api.status == 500 and api.content_type == PROBLEM and "hunter2" not in await api.text()
    assert proto.status == 500 and proto.content_type == "text/plain" and await proto.text() == "internal error\n"
    assert [e["event"] for e in logs] == ["http.unhandled", "http.unhandled"]


async def test_an_unreadable_body_is_400_and_http_exceptions_pass(mini):
    api, proto = await mini.get("/api/body"), await mini.get("/proto/body")
    assert api.status == 400 and api.content_type == PROBLEM
    assert proto.status == 400 and proto.content_type == "text/plain"
    resp = await mini.get("/api/http")
    assert resp.status == 404 and await resp.text() == "plain\n"


# ---- the whole application ------------------------------------------------------------------------------

@pytest.fixture
async def srv(aiohttp_server, tmp_path):
    return await start_app(aiohttp_server, tmp_path)


async def _admin(srv) -> dict[str, str]:
    _, token = await srv.runtime.tokens.create(scope="admin", name="errors-tests", now=NOW)
    return {"Authorization": f"Bearer {token}"}


async def test_one_realm_for_the_api_tokens_on_the_applications_and_otps_routes(srv):
    async with aiohttp.ClientSession(srv.url) as http:
        for path in ("/api/v1/devices", "/api/v1/yubikeys", "/api/v1/enrolments"):
            async with http.get(path) as r:
                assert r.status == 401 and r.content_type == PROBLEM, path
                assert r.headers["WWW-Authenticate"] == f'Bearer realm="{REALM}", scope="admin"', path


async def test_a_token_store_that_is_down_is_503_on_every_api(srv, monkeypatch):
    async def down(token):
        raise _down()

    monkeypatch.setattr(srv.runtime.tokens, "identify", down)
    async with aiohttp.ClientSession(srv.url) as http:
        for path in ("/api/v1/devices", "/api/v1/yubikeys"):
            async with http.get(path, headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 503 and r.content_type == PROBLEM and r.headers["Retry-After"] == "5", path


async def test_scep_keeps_its_answers_but_an_unavailable_database_is_503(srv, monkeypatch):
    async with aiohttp.ClientSession(srv.url) as http:
        async with http.get("/scep/nope?operation=GetCACaps") as r:
            assert r.status == 404 and r.content_type == "text/plain"

        async def down(profile):
            raise _down()

        monkeypatch.setattr(srv.runtime.scep, "get_ca_caps", down)
        async with http.get("/scep/default?operation=GetCACaps") as r:
            assert r.status == 503 and r.content_type == PROBLEM and r.headers["Retry-After"] == "5"

        async def broken(profile):
            raise RuntimeError("secret")

        monkeypatch.setattr(srv.runtime.scep, "get_ca_caps", broken)
        async with http.get("/scep/default?operation=GetCACaps") as r:
            assert r.status == 500 and r.content_type == "text/plain" and "secret" not in await r.text()


async def test_a_key_that_fails_to_sign_a_certrep_is_a_503_logged_and_counted(srv, monkeypatch):
    """The RA key file's signature fails (cryptography raises): the PKIOperation is a 503 `ca_key_failed` with
    Retry-After, not a 500, and the same request succeeds once the key signs again."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scep_server import metrics
    from scep_server.scep import MessageType, PKIStatus, client
    from tests.crlwiring.conftest import _request, ra_and_ca, scep_operation

    ra_key = srv.runtime.cas["default"].ra_key

    class Refusing:
        def __init__(self, key):
            self._key = key

        def sign(self, *args):
            raise ValueError("the key cannot sign")

        def __getattr__(self, name):
            return getattr(self._key, name)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    metrics.activate()
    async with aiohttp.ClientSession() as http:
        ra_der, _ = await ra_and_ca(http, srv.url)
        body = _request(key, ra_der, MessageType.PKCS_REQ, client.make_csr(key, "refused", srv.challenge()),
                        client.make_self_signed_signer(key))
        monkeypatch.setattr(ra_key, "_key", Refusing(ra_key._key))
        with structlog.testing.capture_logs() as logs:
            async with http.post(f"{srv.url}/scep/default?operation=PKIOperation", data=body) as r:
                assert r.status == 503 and r.content_type == PROBLEM and r.headers["Retry-After"], await r.text()
                assert (await r.json())["code"] == "ca_key_failed"
        failed = [e for e in logs if e["event"] == "ca.key.sign_failed"]
        assert [(e["backend"], e["key"]) for e in failed] == [("file", "ra.key")], logs
        assert "the key cannot sign" in failed[0]["error"]
        async with http.get(f"{srv.url}/metrics") as r:
            assert 'ca_key_sign_failures_total{backend="file"}' in await r.text()
        monkeypatch.undo()
        rep = await scep_operation(http, srv.url, body, key, ra_der)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text


async def test_a_lost_race_is_a_409_conflict_and_a_missing_enrolment_a_404(srv, monkeypatch):
    admin = await _admin(srv)
    raised: list[Exception] = []

    async def decide(profile, txid, **kw):
        raise raised[-1]

    monkeypatch.setattr(srv.runtime.scep, "decide", decide)
    async with aiohttp.ClientSession(srv.url) as http:
        raised.append(Conflict("enrolment 'tx' was decided concurrently"))
        async with http.post("/api/v1/enrolments/default/approve", json={"transaction_id": "tx"},
                             headers=admin) as r:
            body = await r.json(content_type=None)
            assert (r.status, body["title"], body["code"]) == (409, "Conflict", "conflict")
        raised.append(LookupError("no pending enrolment 'tx' on profile 'default'"))
        async with http.post("/api/v1/enrolments/default/reject", json={"transaction_id": "tx"},
                             headers=admin) as r:
            body = await r.json(content_type=None)
            assert (r.status, body["title"], body["code"]) == (404, "Not Found", "not_found")


async def test_rejecting_an_enrolment_that_is_no_longer_pending_raises_a_conflict(srv):
    with pytest.raises(Conflict, match="concurrently"):
        await srv.runtime.scep.approvals.reject("default", "never-pending", "no", actor="test", now=NOW, reason=None)


async def test_a_device_changed_concurrently_is_a_409_with_its_own_code(srv, monkeypatch):
    admin = await _admin(srv)
    devices = binding_services(srv.runtime).devices

    async def transition(device_id, action, **kw):
        raise ChangedConcurrently(f"device {device_id!r} changed concurrently; try again")

    monkeypatch.setattr(devices, "transition", transition)
    async with aiohttp.ClientSession(srv.url) as http:
        async with http.post("/api/v1/devices/laptop-1/suspend", headers=admin) as r:
            body = await r.json(content_type=None)
            assert r.status == 409 and r.content_type == PROBLEM
            assert (body["title"], body["code"]) == ("Conflict", "changed_concurrently")
