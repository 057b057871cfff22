"""The OCSP responder of our CAs (RFC 6960, RFC 5019 profile): `GET /ocsp/{ca}/{request}` and `POST /ocsp/{ca}`.

The service is ``runtime.ocsp`` (a :class:`~scep_server.ocspwiring.service.OcspService`), built when
``[ocsp] enabled``; its codec is :mod:`crl.ocsp`. docs/ocsp.md describes the answers, the signer and freshness.
"""
