"""The binding services of one process (``runtime.binding``, built by the composition root), and what
the HTTP handlers need to know of the device model (the id syntax, the lifecycle actions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .attestation import AttestationService
from .devices import DEVICE_ID, DEVICE_KEY, TRANSITIONS, DeviceStatus, DeviceStore
from .external import EXTERNAL_CA_KEY, ExternalCas

if TYPE_CHECKING:
    from ..runtime import Runtime

ACTIONS = tuple(TRANSITIONS)  # the lifecycle actions of a device (suspend, unsuspend, ...)
DEVICE_STATUSES = tuple(s.value for s in DeviceStatus)  # the `status` filter of the device list
__all__ = ["ACTIONS", "DEVICE_KEY", "DEVICE_STATUSES", "EXTERNAL_CA_KEY", "BindingServices", "is_device_id",
           "services"]


def is_device_id(text: str) -> bool:
    return DEVICE_ID.fullmatch(text) is not None


@dataclass
class BindingServices:
    devices: DeviceStore
    attestation: AttestationService
    external: ExternalCas


def services(runtime: "Runtime") -> BindingServices:
    """The binding services of a runtime in which the capability is open (handlers, commands)."""
    if runtime.binding is None:
        raise LookupError("device binding is not open in this process")
    return runtime.binding
