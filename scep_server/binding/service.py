"""The binding services of one process (``runtime.binding``, built by the composition root)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .attestation import AttestationService
from .devices import DeviceStore
from .external import ExternalCas

if TYPE_CHECKING:
    from ..runtime import Runtime


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
