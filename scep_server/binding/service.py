"""The binding services of one process, shared through ``runtime.extras["binding"]``, and what the HTTP
handlers need to know of the device model (the id syntax, the lifecycle actions)."""
from __future__ import annotations

from dataclasses import dataclass

from .attestation import AttestationService
from .devices import DEVICE_ID, TRANSITIONS, DeviceStore
from .external import ExternalCas

EXTRAS_KEY = "binding"
ACTIONS = tuple(TRANSITIONS)  # the lifecycle actions of a device (suspend, unsuspend, ...)


def is_device_id(text: str) -> bool:
    return DEVICE_ID.fullmatch(text) is not None


@dataclass
class BindingServices:
    devices: DeviceStore
    attestation: AttestationService
    external: ExternalCas


def services(runtime) -> BindingServices:
    return runtime.extras[EXTRAS_KEY]
