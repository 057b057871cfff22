"""The device id a request names, as its profile's `device_id` setting says where to find it (pure)."""
from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..ca.policy import compile_pattern
from ..profiles import DeviceIdSource

_ATTRIBUTE = {"CN": NameOID.COMMON_NAME, "serialNumber": NameOID.SERIAL_NUMBER, "UID": NameOID.USER_ID,
              "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
# the syntax of a device id (scep_server.binding.devices.DEVICE_ID), checked whatever the profile's pattern says
_DEVICE_ID = compile_pattern(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class NoDeviceId(ValueError):
    """The request does not name a device as its profile requires (the text says why)."""


def device_id_of(csr: x509.CertificateSigningRequest, source: DeviceIdSource) -> str:
    """The device id `csr` names; NoDeviceId when it names none, several, or one its profile refuses."""
    if source.source == "subject":
        values = [a.value for a in csr.subject.get_attributes_for_oid(_ATTRIBUTE[source.attribute])]
        where = f"the subject's {source.attribute}"
    else:
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = []
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier) if sans else []
        values = [u[len(source.uri_prefix):] for u in uris if u.startswith(source.uri_prefix)]
        where = f"a URI SAN starting with {source.uri_prefix!r}" if source.uri_prefix else "a URI SAN"
    values = [v for v in values if isinstance(v, str)]
    if len(values) != 1:
        raise NoDeviceId(f"the request must name its device in {where} (found {len(values)})")
    value = values[0]
    if not compile_pattern(source.pattern).fullmatch(value) or not _DEVICE_ID.fullmatch(value):
        raise NoDeviceId(f"the device id in {where} does not match the profile's pattern")
    return value
