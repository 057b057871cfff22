"""Who may use each route, and a body that succeeds when the caller is allowed.

The routes themselves come from the application's router (a new route is attacked without being listed
here). A route that no rule below names needs an admin token: a new public route fails the matrix until
it is classified as public here, on purpose.
"""
from __future__ import annotations

import itertools
import json
from typing import Any

from tests.otp.conftest import make_key, secrets_file

from .conftest import Armed

_serials = itertools.count(710_001)


def fresh_otp(key) -> str:
    """The key's next OTP (a new session once the session counter would overflow)."""
    if key.session_use >= 0xFE:
        return key.otp(usage_ctr=key.usage_ctr + 1, session_use=0)
    return key.otp()

# The console's pages (/admin) authenticate by their own session cookie, never by a bearer token: anonymous
# callers are redirected to the sign-in page (tests/console).
PUBLIC_PREFIXES = ("/scep/", "/ca/", "/crl/", "/ocsp/", "/healthz", "/readyz", "/wsapi/", "/metrics",
                   "/api/v1/openapi.json", "/api/v1/docs", "/admin", "/hooks/")
BASIC_ROUTES = {"/scep/{profile}/challenge"}
SIGNIN_ROUTES = {"/api/v1/attestation/challenge", "/api/v1/attestation/verify", "/api/v1/otp/verify"}
# Protocol 2.0 answers 200 to everyone; the verdict is in the body.
IN_BODY_VERDICT = {"/wsapi/2.0/verify"}
# Routes that take a body that is not JSON (SCEP messages, a secrets file, the protocol's form) or none.
NOT_JSON = {"/scep/{profile}", "/scep/{profile}/", "/scep/{profile}/pkiclient.exe",
            "/scep/{profile}/cgi-bin/pkiclient.exe", "/wsapi/2.0/verify", "/api/v1/yubikeys/import",
            "/api/v1/yubikeys/{serial}/revoke", "/api/v1/yubikeys/{serial}", "/api/v1/otp-clients/{id}/disable",
            "/admin/login", "/admin/logout", "/admin/certificates/{serial}/{action}", "/admin/enrolments/decide",
            "/admin/devices/{device_id}/{action}", "/admin/yubikeys/import",
            "/admin/yubikeys/{serial}/{action}", "/admin/profiles", "/admin/profiles/{name}/edit",
            "/admin/profiles/{name}/rotate-secret", "/admin/tokens", "/admin/tokens/{id}/disable",
            "/admin/otp-clients/new", "/admin/otp-clients/{id}/{action}", "/admin/external-cas/new",
            "/admin/external-cas/remove", "/admin/external-cas/forget-crls",  # the console's forms
            "/ocsp/{ca}"}  # OCSP requests (application/ocsp-request)


def required(canonical: str) -> str:
    """"public", "basic", "signin" or "admin"."""
    if canonical in BASIC_ROUTES:
        return "basic"
    if canonical in SIGNIN_ROUTES:
        return "signin"
    if canonical.startswith(PUBLIC_PREFIXES):
        return "public"
    return "admin"


RIGHT = {"basic": "basic-right", "signin": "signin", "admin": "admin"}


def allowed(canonical: str, credential: str) -> bool:
    need = required(canonical)
    return need == "public" or RIGHT[need] == credential


def body_for(armed: Armed, method: str, canonical: str) -> tuple[bytes | None, dict[str, str]]:
    """A body that the route accepts from an allowed caller (so that only authentication stands between an
    attacker and a 2xx), with its content type."""
    json_bodies: dict[str, dict[str, Any]] = {
        "/api/v1/devices": {"name": "matrix"},
        "/api/v1/devices/{device_id}/{action}": {"reason": "matrix"},
        "/api/v1/challenges/{profile}": {},
        "/api/v1/enrolments/{profile}/approve": {"transaction_id": "none"},
        "/api/v1/enrolments/{profile}/reject": {"transaction_id": "none"},
        "/api/v1/attestation/challenge": {"device_id": armed.device_id},
        "/api/v1/attestation/verify": {"device_id": armed.device_id, "nonce": "n", "certificate": "AAAA",
                                       "signature": "AAAA"},
        "/api/v1/otp/verify": {"user": "matrix", "otp": fresh_otp(armed.yubikey)},
        "/api/v1/otp-clients": {"name": "matrix"},
        "/api/v1/external-cas": {"name": "matrix", "certificate": "AAAA"},
        "/api/v1/certificates/{serial}/revoke": {"reason": "superseded", "invalidity_date": "2026-01-01"},
        "/api/v1/certificates/{serial}/hold": {},
        "/api/v1/certificates/{serial}/release": {},
        "/api/v1/cas/{ca}/crl/publish": {},
        "/api/v1/cas/{ca}/ra/renew": {},
        "/api/v1/cas/{ca}/rollover/activate": {},
        "/api/v1/tokens/{id}/rotate": {},
        "/api/v1/cas/{ca}/rollover/prepare": {"cross_sign": False},
        "/scep/{profile}/challenge": {"webhook": {"webhookEvent": "SCEPChallenge"}, "event": {}},
        "/api/v1/profiles": {"name": "matrix", "challenge": "static", "settings": {}},
        "/api/v1/profiles/{name}": {"settings": {"require_approval": False}},
        "/api/v1/tokens": {"scope": "signin", "name": "matrix"},
    }
    if method == "POST" and canonical == "/api/v1/yubikeys/import":
        return secrets_file([make_key(next(_serials))]), {"Content-Type": "text/csv"}
    if method in ("POST", "DELETE", "PUT", "PATCH") and canonical in json_bodies:
        return json.dumps(json_bodies[canonical]).encode(), {"Content-Type": "application/json"}
    return None, {}


def json_fields(armed: Armed, canonical: str) -> dict[str, Any]:
    """The fields of the route's JSON body (the ones the bombs replace with wrong types)."""
    raw, _ = body_for(armed, "POST", canonical)
    return json.loads(raw) if raw else {}
