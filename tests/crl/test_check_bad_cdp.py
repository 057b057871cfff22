"""A certificate of a registered (broken) customer CA whose CRL Distribution Point URI does not parse as a URL
("http://[bad"), or whose CDP extension is duplicated, is an unreadable certificate: `CrlChecker.check`
answers, it does not raise."""
from crl.check import CheckStatus, CrlChecker
from crl.config import CheckerSettings

from tests.crl.customer_ca import Ca


def test_check_answers_for_unparsable_cdp_uri():
    ca = Ca("Broken CDP CA")
    c = CrlChecker(settings=CheckerSettings())
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    leaf = ca.leaf(0x99, cdps=("http://[not-an-ipv6/crl",))
    try:
        r = c.check(leaf)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"check() raised {type(exc).__name__}: {exc}") from None
    assert not r.allowed and r.status is CheckStatus.UNKNOWN


def _resign_with_duplicate_extension(ca, cert):
    from asn1crypto import x509 as a
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    c = a.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    tbs = c["tbs_certificate"]
    exts = list(tbs["extensions"])
    tbs["extensions"] = a.Extensions(exts + [exts[-1]])  # the CDP twice
    tbs_der = tbs.dump(force=True)
    sig = ca.key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    out = a.Certificate({"tbs_certificate": a.TbsCertificate.load(tbs_der), "signature_algorithm": c["signature_algorithm"],
                         "signature_value": sig})
    return x509.load_der_x509_certificate(out.dump())


def test_check_answers_for_duplicate_extension():
    """The same, for a certificate whose extensions cannot be read (a duplicate CDP: cryptography raises
    DuplicateExtension when crl/check.py `cdp_uris` reads cert.extensions)."""
    ca = Ca("Dup Ext CA")
    c = CrlChecker(settings=CheckerSettings())
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    leaf = _resign_with_duplicate_extension(ca, ca.leaf(0x98))
    try:
        r = c.check(leaf)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"check() raised {type(exc).__name__}: {exc}") from None
    assert not r.allowed
