"""The OpenAPI document: valid OpenAPI 3.1, equal to the router of a fully-enabled application, its enums equal
to the code's constants, assembled strictly from its parts, served, and enforced on the tests' exchanges
(tests/openapi_check.py)."""
from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from multidict import CIMultiDict

from scep_server.web import apidoc
from tests import openapi_check
from tests.factories import settings_for
from tests.server import start_app

PARAM = re.compile(r"\{[^}]+\}")


def _doc() -> dict:
    return apidoc.document()


def _schema(name: str) -> dict:
    return _doc()["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3_1():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError  # noqa: F401 - the API exists

    doc = _doc()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)


def _api_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/v1/") and route.method != "HEAD":
            out.add((route.method.lower(), PARAM.sub("{}", path)))
    return out


def _documented(doc: dict) -> set[tuple[str, str]]:
    return {(method, PARAM.sub("{}", path)) for path, item in doc["paths"].items() if path.startswith("/api/v1/")
            for method in item if method in apidoc.HTTP_METHODS}


def test_every_api_route_is_documented_and_every_documented_route_exists(tmp_path):
    from scep_server import features
    from scep_server.app import create_app

    settings = settings_for(tmp_path / "data")
    assert all(feature.enabled(settings) for feature in features.load()), "a capability is off by default"
    router = _api_routes(create_app(settings))
    documented = _documented(_doc())
    assert router - documented == set(), "routes missing from the OpenAPI document"
    assert documented - router == set(), "documented routes the application does not have"
    assert ("post", "/api/v1/devices/{}/{}") in router and len(router) > 20


def test_the_extras_outside_the_api_are_routes_too(tmp_path):
    from scep_server.app import create_app

    app = create_app(settings_for(tmp_path / "data"))
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    extras = {(m, p) for p, item in _doc()["paths"].items() if not p.startswith("/api/v1/")
              for m in item if m in apidoc.HTTP_METHODS}
    assert extras == {("get", "/scep/{profile}/challenge"), ("post", "/scep/{profile}/challenge"),
                      ("get", "/wsapi/2.0/verify"), ("post", "/wsapi/2.0/verify")}
    assert extras <= routes


# ---- enums: the document says what the code says ---------------------------------------------------------


def test_attestation_reasons_and_algorithms_are_the_codes():
    from scep_server.binding.attestation import ALGORITHMS, Verdict

    assert _schema("AttestationReason")["enum"] == [v.value for v in Verdict]
    assert set(_schema("AttestationAlgorithm")["enum"]) == set(ALGORITHMS)


def test_device_states_actions_and_certificate_statuses_are_the_codes():
    from crl.check import CheckStatus
    from crl.config import Policy
    from scep_server.binding.devices import DeviceStatus
    from scep_server.binding.service import ACTIONS
    from scep_server.ca.status import CertStatus

    assert _schema("DeviceStatus")["enum"] == [s.value for s in DeviceStatus]
    assert _schema("DeviceAction")["enum"] == list(ACTIONS)
    assert _schema("DeviceCertificateChange")["properties"]["status"]["enum"] == [s.value for s in CertStatus]
    assert _schema("AttestationCrl")["properties"]["status"]["enum"] == [s.value for s in CheckStatus]
    assert set(_schema("ExternalCaPolicy")["enum"]) == {p.value for p in Policy}


def test_otp_statuses_and_reasons_are_the_codes():
    from otp import yubico
    from otp.errors import Reason
    from otp.tables import STATUSES

    assert _schema("OtpReason")["enum"] == [r.value for r in Reason]
    assert _schema("OtpProtocolStatus")["enum"] == [s.value for s in yubico.Status]
    assert _schema("YubikeyStatus")["enum"] == list(STATUSES)
    refused = [r.value for r in Reason if not r.ok]
    assert _schema("OtpRejected")["properties"]["code"]["enum"] == refused
    verify = _doc()["paths"]["/api/v1/otp/verify"]["post"]["responses"]
    assert verify["200"]["content"]["application/json"]["schema"]["properties"]["reason"]["enum"] == \
        [r.value for r in Reason if r.ok]
    # each refusal's HTTP status is one the route documents
    assert {str(r.http_status) for r in Reason if not r.ok} <= set(verify)


def test_enrolment_states_are_the_codes():
    from scep_server.challenge.enrolments import STATES

    assert _schema("Enrolment")["properties"]["state"]["enum"] == list(STATES)
    state = next(p for p in _doc()["paths"]["/api/v1/enrolments"]["get"]["parameters"] if p.get("name") == "state")
    assert state["schema"]["enum"] == [*STATES, "all"]


def test_the_signed_payload_schema_matches_what_the_code_verifies():
    import secrets

    from scep_server.binding.attestation import signed_bytes

    nonce = secrets.token_urlsafe(41)[:55]
    payload = signed_bytes(nonce, "MAC-0001").decode()
    jsonschema.validate(payload, _schema("AttestationSignedPayload"))
    jsonschema.validate(nonce, _schema("AttestationNonce"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload.replace("-v1", "-v2"), _schema("AttestationSignedPayload"))


# ---- the assembler ---------------------------------------------------------------------------------------


def _parts(tmp_path: Path, **files: str) -> Path:
    common = (apidoc.PARTS_DIR / apidoc.COMMON).read_text()
    (tmp_path / apidoc.COMMON).write_text(common)
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


ONE = """
paths:
  /api/v1/things:
    get: {responses: {"200": {description: ok}}}
components:
  schemas:
    Thing: {type: object}
"""


def test_the_assembler_merges_paths_and_components(tmp_path):
    other = "paths:\n  /api/v1/things:\n    post: {responses: {'201': {description: made}}}\n"
    doc = apidoc.assemble(_parts(tmp_path, a=ONE, b=other))
    assert set(doc["paths"]["/api/v1/things"]) == {"get", "post"}
    assert "Thing" in doc["components"]["schemas"] and "Problem" in doc["components"]["schemas"]


@pytest.mark.parametrize("second, message", [
    ("paths:\n  /api/v1/things:\n    get: {responses: {'200': {description: again}}}\n", "get /api/v1/things"),
    ("components:\n  schemas:\n    Thing: {type: string}\n", "schemas.Thing"),
    ("components:\n  schemas:\n    Problem: {type: string}\n", "schemas.Problem"),
    ("info: {title: mine}\n", "only paths and components"),
    ("- a list\n", "not a mapping"),
])
def test_the_assembler_refuses_a_second_definition_or_a_stray_key(tmp_path, second, message):
    with pytest.raises(apidoc.DocumentError, match=re.escape(message)):
        apidoc.assemble(_parts(tmp_path, a=ONE, b=second))


# ---- served ----------------------------------------------------------------------------------------------


async def test_the_document_and_its_page_are_served_without_a_token(aiohttp_server, tmp_path):
    server = await start_app(aiohttp_server, tmp_path)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/v1/openapi.json") as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == apidoc.document()
        async with http.get(f"{server.url}/api/v1/docs") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
    assert 'fetch("openapi.json")' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page loads nothing from elsewhere"
    assert len(openapi_check.PENDING) == 2 and not openapi_check.drain()


# ---- the check of every exchange -------------------------------------------------------------------------


def _req(method: str, path: str, *, body: bytes | None = None, headers: dict | None = None, query: str = ""):
    from multidict import MultiDict
    from openapi_core.datatypes import RequestParameters

    params = MultiDict([tuple(p.split("=", 1)) for p in query.split("&") if p])
    return openapi_check._Request(method=method, host_url="http://127.0.0.1", path=path, body=body,
                                  content_type="application/json" if body else "",
                                  parameters=RequestParameters(query=params, header=CIMultiDict(headers or {}),
                                                               cookie={}))


def _resp(status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None):
    return openapi_check._Response(status_code=status, content_type=content_type, data=body,
                                   headers=CIMultiDict(headers or {}))


ADMIN = {"Authorization": "Bearer t"}
DEVICE = (b'{"id": "d1", "name": "", "status": "active", "created_at": "2026-01-01T00:00:00+00:00", '
          b'"created_by": "api:admin", "status_changed_at": "2026-01-01T00:00:00+00:00", '
          b'"status_changed_by": "api:admin", "status_reason": "registered"}')


def test_the_check_accepts_a_documented_exchange():
    assert openapi_check.check(_req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN),
                               _resp(201, DEVICE)) is None
    problem = b'{"type": "about:blank", "title": "Conflict", "status": 409, "detail": "x", "code": "device_exists"}'
    assert openapi_check.check(_req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN),
                               _resp(409, problem, "application/problem+json")) is None


@pytest.mark.parametrize("request_, response, why", [
    # an answer of the wrong shape: a member missing, a status not documented, an undocumented problem code
    (_req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN),
     _resp(201, DEVICE.replace(b'"status": "active", ', b"")), "answer"),
    (_req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN), _resp(202, DEVICE), "answer"),
    (_req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN),
     _resp(409, b'{"type": "about:blank", "title": "Conflict", "status": 409, "detail": "x", "code": "oops"}',
           "application/problem+json"), "answer"),
    (_req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN), _resp(409, b"text", "text/plain"),
     "answer"),
    # a 401 without its challenge header
    (_req("get", "/api/v1/devices"),
     _resp(401, b'{"type": "about:blank", "title": "U", "status": 401, "detail": "", "code": "unauthorized"}',
           "application/problem+json"), "answer"),
    # an invalid request (no token; a member of the wrong type; a bad query value) that was let through
    (_req("post", "/api/v1/devices", body=b'{"id": "d1"}'), _resp(201, DEVICE), "request"),
    (_req("post", "/api/v1/devices", body=b'{"id": 5}', headers=ADMIN), _resp(201, DEVICE), "request"),
    (_req("get", "/api/v1/devices", headers=ADMIN, query="status=gone"),
     _resp(200, b'{"devices": []}'), "request"),
    # a path or a method the document does not hold, answered other than 404 / 405
    (_req("get", "/api/v1/undocumented", headers=ADMIN), _resp(200, b"{}"), "not in the OpenAPI document"),
    (_req("put", "/api/v1/devices", headers=ADMIN), _resp(200, b"{}"), "not in the OpenAPI document"),
])
def test_the_check_refuses_what_the_document_does_not_say(request_, response, why):
    found = openapi_check.check(request_, response)
    assert found is not None and why in found


def test_a_refused_invalid_request_and_an_unknown_path_answered_404_pass():
    assert openapi_check.check(_req("post", "/api/v1/devices", body=b'{"id": 5}', headers=ADMIN), _resp(
        400, b'{"type": "about:blank", "title": "B", "status": 400, "detail": "", "code": "invalid_input"}',
        "application/problem+json")) is None
    assert openapi_check.check(_req("get", "/api/v1/nothing-here"), _resp(404, b"404", "text/plain")) is None
    assert openapi_check.check(_req("put", "/api/v1/devices"), _resp(405, b"405", "text/plain")) is None


async def test_an_undocumented_answer_of_a_served_application_is_recorded(aiohttp_client):
    async def bogus(request):
        return web.json_response({"devices": "not a list"})

    app = web.Application()
    app.router.add_get("/api/v1/devices", bogus)
    client = await aiohttp_client(openapi_check.attach(app))
    async with client.get("/api/v1/devices", headers=ADMIN) as r:
        assert r.status == 200
    async with client.get("/api/v1/devices/x/y/z", headers=ADMIN) as r:
        assert r.status == 404  # no route: left to the router
    try:
        assert len(openapi_check.PENDING) == 1
        found = openapi_check.drain()
        assert len(found) == 1 and "GET /api/v1/devices -> 200" in found[0] and not openapi_check.PENDING
    finally:
        openapi_check.FAILURES.clear()


def test_a_json_body_sent_under_another_type_is_checked_as_json():
    plain = _req("post", "/api/v1/devices", body=b'{"id": "d1"}', headers=ADMIN)
    plain.content_type = "text/plain"
    assert openapi_check.check(plain, _resp(201, DEVICE)) is None
    plain.body = b'{"id": 5}'
    assert "request" in openapi_check.check(plain, _resp(201, DEVICE))


def test_paths_are_checked_as_the_router_matches_them():
    assert openapi_check._document_path("/%61%70%69/%761/devices/d%2F1") == "/api/v1/devices/d%2F1"
    # an encoded slash stays inside its segment: one device id, not a path with another route's shape
    assert openapi_check.check(_req("get", openapi_check._document_path("/api/v1/devices/a%2Fb"), headers=ADMIN),
                               _resp(404, b'{"type": "about:blank", "title": "N", "status": 404, "detail": "", '
                                          b'"code": "device_not_found"}', "application/problem+json")) is None
