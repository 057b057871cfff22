"""A CertID is echoed in its response and kept with it in the cache: none bigger than a real one's is answered.
Its serial number is bounded (21 octets); so are the parameters of its hash algorithm, which SHA-1 and SHA-256 do
not have (RFC 5754 §2: absent, or NULL as many clients send): any other value is a malformedRequest."""
from __future__ import annotations

import pytest
from asn1crypto import ocsp as a_ocsp
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from crl.ocsp import MalformedRequest, parse_request
from trustkit import der

from .conftest import ca_of, issue, post, request_der
from .test_codec import _request, pki  # noqa: F401 - the module's fixture


def _with_parameters(request: bytes, parameters: bytes | None) -> bytes:
    """The request's one CertID with its hash algorithm's ``parameters`` (encoded; None: absent)."""
    cid = a_ocsp.OCSPRequest.load(request)["tbs_request"]["request_list"][0]["req_cert"]
    alg = der.seq(cid["hash_algorithm"]["algorithm"].dump(), *([parameters] if parameters is not None else []))
    cert_id = der.seq(alg, cid["issuer_name_hash"].dump(), cid["issuer_key_hash"].dump(),
                      cid["serial_number"].dump())
    return der.seq(der.seq(der.seq(der.seq(cert_id))))  # OCSPRequest, TBSRequest, requestList, Request


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])
def test_hash_parameters_absent_or_null_are_read_and_any_other_is_malformed(pki, algorithm):  # noqa: F811
    ca, cert = pki
    request = _request(cert, ca.cert, algorithm)
    for parameters in (None, der.NULL_DER):
        (cid,) = parse_request(_with_parameters(request, parameters)).cert_ids
        assert cid.serial == cert.serial_number
    for parameters in (der.octet_string(b"x" * 3800), der.integer(1), der.seq(), der.tlv(der.NULL, b"x")):
        with pytest.raises(MalformedRequest, match="parameters"):
            parse_request(_with_parameters(request, parameters))


async def test_hash_parameters_of_thousands_of_octets_are_malformed_and_nothing_is_kept(server, device_key):
    ca = ca_of(server)
    request = request_der(await issue(server, device_key), ca.cert)
    held = len(server.runtime.ocsp.cache.entries)
    for i in range(20):
        hostile = _with_parameters(request, der.octet_string(bytes([i]) * 3800))
        http, answer = await post(server.url, hostile)
        assert http.status == 200
        assert ocsp.load_der_ocsp_response(answer).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert len(server.runtime.ocsp.cache.entries) == held
    http, answer = await post(server.url, _with_parameters(request, der.NULL_DER))  # as OpenSSL sends it
    assert ocsp.load_der_ocsp_response(answer).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
