"""Typed errors of device management (mapped to HTTP 404/409/400 and CLI exit code 1)."""
from __future__ import annotations


class BindingError(Exception):
    """Base class; ``code`` is a stable machine-readable name."""

    code = "binding_error"
    http_status = 400


class DeviceNotFound(BindingError):
    code = "device_not_found"
    http_status = 404


class DeviceExists(BindingError):
    code = "device_exists"
    http_status = 409


class InvalidTransition(BindingError):
    code = "invalid_transition"
    http_status = 409


class InvalidInput(BindingError):
    code = "invalid_input"
    http_status = 400


class ExternalCaError(BindingError):
    code = "external_ca_refused"
    http_status = 400
