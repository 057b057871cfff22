"""The binding services of one process, shared through ``runtime.extras["binding"]``."""
from __future__ import annotations

from dataclasses import dataclass

from .attestation import AttestationService
from .devices import DeviceStore
from .external import ExternalCas

EXTRAS_KEY = "binding"


@dataclass
class BindingServices:
    devices: DeviceStore
    attestation: AttestationService
    external: ExternalCas


def services(runtime) -> BindingServices:
    return runtime.extras[EXTRAS_KEY]
