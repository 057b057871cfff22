"""Typed errors of device management: `trustkit.problems.DomainError`s (HTTP 404/409/400 with a stable
``code``, CLI exit code 1)."""
from __future__ import annotations

from trustkit import problems


class BindingError(problems.DomainError):
    """Base class; ``code`` is a stable machine-readable name, ``status`` the HTTP status."""

    code = "binding_error"
    status = 400


class DeviceNotFound(BindingError, problems.NotFound):
    code = "device_not_found"
    status = 404


class DeviceExists(BindingError, problems.Conflict):
    code = "device_exists"
    status = 409


class InvalidTransition(BindingError, problems.Conflict):
    code = "invalid_transition"
    status = 409


class ChangedConcurrently(InvalidTransition):
    """Another writer changed the device between our read and our write: try again."""

    code = "changed_concurrently"


class SupersededByNewerEvent(InvalidTransition):
    """The MDM gave a later time to another event about the device since this one was judged: it decides."""

    code = "superseded_by_newer_event"


class InvalidInput(BindingError, problems.BadRequest):
    code = "invalid_input"
    status = 400


class ExternalCaError(BindingError):
    code = "external_ca_refused"
    status = 400


class ExternalCaNotFound(BindingError, problems.NotFound):
    code = "external_ca_not_found"
    status = 404
