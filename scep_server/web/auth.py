"""Authentication of the HTTP routes, in one place (docs/api.md "Authentication").

- Bearer API tokens (``scep-server token create``), each of one scope, ``admin`` or ``signin``. A handler
  declares its scope with :func:`requires`; :func:`bearer_auth` enforces it. otp's routes are handed
  :func:`authenticate_token` and :data:`REALM` and check the same tokens the same way.
- HTTP Basic for the challenge page of a profile (its credentials are the profile's own):
  :func:`basic_credentials` and :func:`bad_credentials`.
- The webhook secret of an MDM source (``/hooks/{source}``), presented as Jamf Pro sends it: the password of
  HTTP Basic, or a header (:data:`WEBHOOK_HEADER`): :func:`webhook_secret` and :func:`bad_webhook_secret`.

Realms name what the credentials belong to: ``device-trust`` for the API tokens, ``SCEP challenge
<profile>`` for a profile's Basic credentials. Every challenge has one format,
``<Scheme> realm="<realm>"[, name="value"]...`` (:func:`trustkit.http.www_authenticate`). A refusal is a
raised :class:`~trustkit.problems.Unauthorized` (401, with the challenge) or
:class:`~trustkit.problems.Forbidden` (403); the error middleware answers it.
"""
from __future__ import annotations

from aiohttp import web

from trustkit.http import bearer_caller, www_authenticate
from trustkit.problems import Unauthorized

from ..appkeys import RUNTIME
from ..challenge.basic import parse_basic

REALM = "device-trust"
"""The realm of the API tokens, on every route they protect (the application's and otp's)."""

ACTOR = web.RequestKey("api_actor", str)
"""Who called, as ``token:<id>:<name>``, once :func:`bearer_auth` has let a request through: the principal
recorded as the actor of the caller's changes in the audit trail (docs/api.md "Authentication")."""


def requires(scope: str):
    """Mark a handler as needing a bearer token of `scope`."""
    def mark(handler):
        handler.required_scope = scope
        return handler
    return mark


async def authenticate_token(request: web.Request, token: str) -> tuple[str, str] | None:
    """(scope, "token:<id>:<name>") of an enabled API token, None for an unknown or disabled one."""
    granted = await request.app[RUNTIME].tokens.identify(token)
    if granted is None:
        return None
    scope, token_id, name = granted
    return scope, token_principal(token_id, name)


def token_principal(token_id: str, name: str) -> str:
    """The actor of an API token's changes: ``token:<id>:<name>`` (the id is unique, the name says whose)."""
    return f"token:{token_id}:{name}"[:255]  # events.actor holds 255 characters


@web.middleware
async def bearer_auth(request: web.Request, handler):
    """Enforce the `required_scope` of the matched handler (401 or 403, raised)."""
    scope = getattr(request.match_info.handler, "required_scope", None)
    if scope is not None:
        request[ACTOR] = await bearer_caller(request, scope, authenticate_token, realm=REALM)
    return await handler(request)


def basic_realm(profile: str) -> str:
    """The realm of a profile's challenge-page credentials."""
    return f"SCEP challenge {profile}"


def basic_credentials(request: web.Request, realm: str) -> tuple[str, str]:
    """(username, password) of the request's ``Authorization: Basic``, or a raised 401 with the challenge."""
    given = parse_basic(request.headers.get("Authorization"))
    if given is None:
        raise Unauthorized("HTTP Basic credentials are required", headers=_basic_challenge(realm))
    return given


def bad_credentials(realm: str) -> Unauthorized:
    """The 401 for a wrong username or password (raise it)."""
    return Unauthorized("invalid username or password", headers=_basic_challenge(realm))


WEBHOOK_HEADER = "X-Webhook-Secret"
"""The header that carries an MDM source's webhook secret when the MDM uses header authentication."""


def webhook_realm(source: str) -> str:
    return f"MDM webhook {source}"


def webhook_secret(request: web.Request) -> str | None:
    """The webhook secret a request presents: the `X-Webhook-Secret` header, or the password of HTTP Basic
    (the user name is not checked: the secret alone is the credential)."""
    header = request.headers.get(WEBHOOK_HEADER)
    if header:
        return header
    given = parse_basic(request.headers.get("Authorization"))
    return given[1] if given is not None else None


def bad_webhook_secret(source: str) -> Unauthorized:
    """The 401 of a webhook post without the source's secret (also for a source that does not exist)."""
    return Unauthorized("the webhook secret of this source is required", headers=_basic_challenge(
        webhook_realm(source)))


def _basic_challenge(realm: str) -> dict[str, str]:
    return www_authenticate("Basic", realm, charset="UTF-8")
