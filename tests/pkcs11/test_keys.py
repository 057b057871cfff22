"""CA and RA keys in a PKCS#11 token: generated there, never extractable, signing and decrypting there."""
from __future__ import annotations

import concurrent.futures
import os

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from scep_server.ca.authority import load_ca
from scep_server.ca.pkcs11 import HsmError, HsmSettings, Pkcs11Keys, read_pin
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.factories import NOW, csr, rsa_key

from .conftest import PIN


def keys(softhsm, *, pin: str = PIN, pool_size: int = 2, module: str | None = None, label: str | None = None,
         ca_label: str = "scep-ca") -> Pkcs11Keys:
    return Pkcs11Keys(HsmSettings(module=module or softhsm.module, token_label=label or softhsm.label, pin=pin,
                                  ca_key_label=ca_label, ra_key_label="scep-ra", pool_size=pool_size))


@pytest.fixture
def store(softhsm):
    s = keys(softhsm)
    yield s
    s.close()


@pytest.mark.parametrize("key_type,curve,digest", [("ec-p256", "secp256r1", hashes.SHA256()),
                                                   ("ec-p384", "secp384r1", hashes.SHA384()),
                                                   ("rsa", None, hashes.SHA256())])
def test_a_generated_ca_key_signs_in_the_token_and_cannot_leave_it(store, key_type, curve, digest):
    key = store.ca_key(create=(key_type, 2048))
    pub = key.public_key()
    signature = key.sign(b"tbs bytes", digest)
    if curve:
        assert pub.curve.name == curve
        pub.verify(signature, b"tbs bytes", ec.ECDSA(digest))
    else:
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
        pub.verify(signature, b"tbs bytes", padding.PKCS1v15(), digest)
    with store.pool.session() as s:
        private = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="scep-ca")
        assert private[pkcs11.Attribute.SENSITIVE] and not private[pkcs11.Attribute.EXTRACTABLE]
        assert private[pkcs11.Attribute.TOKEN] and private[pkcs11.Attribute.PRIVATE]
        assert private[pkcs11.Attribute.NEVER_EXTRACTABLE]
        with pytest.raises(pkcs11.PKCS11Error):  # the value of a sensitive key is never returned
            private[pkcs11.Attribute.VALUE if curve else pkcs11.Attribute.PRIVATE_EXPONENT]


def test_the_ra_key_decrypts_pkcs1_v15_and_oaep_and_refuses_garbage(store):
    key = store.ra_key(create=("rsa", 2048))
    pub = key.public_key()
    cek = os.urandom(16)
    assert key.decrypt(pub.encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    assert key.decrypt(pub.encrypt(cek, oaep), "oaep-sha1") == cek
    with pytest.raises(Exception):
        key.decrypt(os.urandom(256), "pkcs1v15")
    with pytest.raises(ValueError, match="unsupported"):
        key.decrypt(b"x", "rsa-kem")
    # CertRep signatures mirror the request's digest, SHA-1 included
    for digest in (hashes.SHA1(), hashes.SHA256(), hashes.SHA512()):
        pub.verify(key.sign(b"signed attributes", digest), b"signed attributes", padding.PKCS1v15(), digest)


def test_an_existing_key_is_found_by_label_and_not_replaced(softhsm, store):
    made = store.ca_key(create=("ec-p256", 0))
    again = keys(softhsm)
    try:
        assert again.ca_key(create=("ec-p384", 0)).public_key() == made.public_key()  # used, not regenerated
        assert again.ca_key().public_key() == made.public_key()
    finally:
        again.close()


def test_a_missing_module_token_pin_or_key_is_a_clear_error(softhsm, tmp_path):
    with pytest.raises(HsmError, match="module /nonexistent/libhsm.so does not exist"):
        keys(softhsm, module="/nonexistent/libhsm.so")
    not_a_library = tmp_path / "lib.so"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(HsmError, match="cannot load the PKCS#11 module"):
        keys(softhsm, module=str(not_a_library))
    with pytest.raises(HsmError, match="no PKCS#11 token labelled 'no-such-token'"):
        keys(softhsm, label="no-such-token")
    with pytest.raises(HsmError, match="PIN .* is wrong"):
        keys(softhsm, pin="000000")
    store = keys(softhsm)
    try:
        with pytest.raises(HsmError, match="no private key labelled 'scep-ca'"):
            store.ca_key()
        store.ca_key(create=("ec-p256", 0))
    finally:
        store.close()
    # an RA label that names an EC key: the RA must decrypt RSA key transport
    ra_is_ec = Pkcs11Keys(HsmSettings(module=softhsm.module, token_label=softhsm.label, pin=PIN,
                                      ca_key_label="other", ra_key_label="scep-ca", pool_size=1))
    try:
        with pytest.raises(HsmError, match="RA key 'scep-ca' .* must be RSA"):
            ra_is_ec.ra_key()
    finally:
        ra_is_ec.close()


@pytest.mark.parametrize("key_type", ["rsa", "ec-p256"])
def test_a_stray_public_key_under_the_label_is_not_taken_for_the_keys(softhsm, store, key_type):
    """A public key object left under the label by an earlier key (its private half deleted) is not the key's:
    the key found is the one whose private half signs, before and after the key was made."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    def stray(session, _key) -> None:
        if key_type == "rsa":
            _, private = session.generate_keypair(KeyType.RSA, 2048, label="scep-ca", store=True)
        else:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            _, private = params.generate_keypair(label="scep-ca", store=True)
        private.destroy()

    store.pool.call(stray)
    made = store.ca_key(create=(key_type, 2048))
    again = keys(softhsm)
    try:
        key = again.ca_key()
        assert key.public_key() == made.public_key()
        signature = key.sign(b"tbs", hashes.SHA256())
        if key_type == "rsa":
            key.public_key().verify(signature, b"tbs", padding.PKCS1v15(), hashes.SHA256())
        else:
            key.public_key().verify(signature, b"tbs", ec.ECDSA(hashes.SHA256()))
    finally:
        again.close()

    def orphan_only(session, _key) -> None:  # an EC key whose only public key object under its label is another's
        from cryptography.hazmat.primitives import serialization
        from pkcs11.util.ec import encode_ec_public_key

        for obj in session.get_objects({Attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY, Attribute.LABEL: "scep-ca"}):
            if serialization.load_der_public_key(encode_ec_public_key(obj)) == made.public_key():
                obj.destroy()

    if key_type == "ec-p256":
        store.pool.call(orphan_only)
        with pytest.raises(HsmError, match="no public key object labelled 'scep-ca' .* is the public key"):
            keys(softhsm).ca_key()


def test_a_token_key_too_weak_or_on_another_curve_is_refused(softhsm, store):
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    def make(session, _key) -> None:
        session.generate_keypair(KeyType.RSA, 1024, label="weak", store=True)
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp521r1")}, local=True)
        params.generate_keypair(label="p521", store=True)

    store.pool.call(make)
    for label, why in (("weak", "RSA of 1024 bits: at least 2048"), ("p521", "curve secp521r1: P-256 or P-384")):
        other = keys(softhsm, ca_label=label)
        try:
            with pytest.raises(HsmError, match=why):
                other.ca_key()
        finally:
            other.close()
    with pytest.raises(HsmError, match="RA key 'weak' .* RSA of 1024 bits"):
        store.ra_key(label="weak")


def test_the_pin_is_in_no_representation_nor_error(softhsm):
    """The settings object is what a traceback renderer or a debug line would show: it does not show the PIN."""
    with pytest.raises(HsmError) as wrong:
        keys(softhsm, pin="97531")
    assert "97531" not in str(wrong.value) and "97531" not in repr(wrong.value)
    store = keys(softhsm)
    try:
        assert PIN not in repr(store.settings) and "pin=" not in repr(store.pool.settings)
    finally:
        store.close()


def test_a_token_that_refuses_the_search_or_the_generation_is_a_clear_error(softhsm, store, monkeypatch):
    """An error the token answers while the keys are looked up or made (init, a start, an RA renewal) is an
    HsmError naming the key and the error (a message at the command line), not the library's exception."""
    from scep_server.ca import pkcs11 as module

    def refused(*args, **kwargs):
        raise pkcs11.DeviceMemory()

    monkeypatch.setattr(module, "_find_public", refused)
    with pytest.raises(HsmError, match="cannot find the key 'scep-ca' in PKCS#11 token .*: DeviceMemory"):
        store.ca_key()
    monkeypatch.undo()
    monkeypatch.setattr(module, "_generate", refused)
    with pytest.raises(HsmError, match="cannot find or generate the key 'scep-ra' .*: DeviceMemory"):
        store.ra_key(create=("rsa", 2048))


def test_the_pin_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_PIN", raising=False)
    with pytest.raises(HsmError, match=r"set \$TEST_PIN or ca.pkcs11_pin_file"):
        read_pin("TEST_PIN", None)
    (tmp_path / "pin").write_text("1234\n")
    assert read_pin("TEST_PIN", tmp_path / "pin") == "1234"
    with pytest.raises(HsmError, match="cannot read"):
        read_pin("TEST_PIN", tmp_path / "absent")
    monkeypatch.setenv("TEST_PIN", "9999")
    assert read_pin("TEST_PIN", tmp_path / "pin") == "9999"


def test_a_ca_in_the_token_writes_no_key_file_and_threads_share_the_pool(softhsm, tmp_path):
    from scep_server.ca.authority import create_ca

    store = keys(softhsm, pool_size=3)
    try:
        ca = create_ca(tmp_path / "ca", name="default", subject="CN=HSM CA", ra_subject="CN=HSM RA", key_size=2048,
                       validity_days=365, ra_validity_days=365, passphrase=b"", base_url="http://127.0.0.1:1",
                       now=NOW, key_type="ec-p256", key_store=store)
        assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ra.crt"]
        assert ca.cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
        policy = IssuancePolicy(CertificateTemplate())
        requests = [csr(rsa_key(), f"dev{i}") for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            certs = list(pool.map(lambda i: ca.issue(requests[i % 4], policy, serial=100 + i, now=NOW), range(24)))
        assert all(ca.issued_by_us(c) for c in certs)
        assert store.pool.size == 3
        loaded = load_ca(tmp_path / "ca", name="default", passphrase=b"", base_url="http://127.0.0.1:1",
                         key_store=store)
        assert loaded.ra_key.public_key() == ca.ra_cert.public_key()
    finally:
        store.close()
    # a token whose key is not the certificate's is refused
    other = keys(softhsm, ca_label="another-ca")
    try:
        other.ca_key(create=("ec-p256", 0))
        with pytest.raises(ValueError, match="not the key of ca.crt"):
            load_ca(tmp_path / "ca", name="default", passphrase=b"", base_url="http://x", key_store=other)
    finally:
        other.close()


def test_threads_decrypt_and_sign_at_once_without_a_fault(softhsm):
    """python-pkcs11 initialises the library without OS locking: calls from several threads must be serialised."""
    store = keys(softhsm, pool_size=4)
    try:
        ra = store.ra_key(create=("rsa", 2048))
        ca = store.ca_key(create=("ec-p256", 0))
        pub = ra.public_key()
        ceks = [os.urandom(16) for _ in range(50)]
        wrapped = [pub.encrypt(c, padding.PKCS1v15()) for c in ceks]

        def work(i):
            assert ra.decrypt(wrapped[i % 50], "pkcs1v15") == ceks[i % 50]
            ca.public_key().verify(ca.sign(b"%d" % i, hashes.SHA256()), b"%d" % i, ec.ECDSA(hashes.SHA256()))
            return True

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert all(pool.map(work, range(400)))
    finally:
        store.close()


def test_the_pkcs11_backend_needs_its_module_and_token_and_two_labels():
    from scep_server.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="needs pkcs11_module and pkcs11_token_label"):
        load_settings(None, ca={"key_backend": "pkcs11"})
    with pytest.raises(ConfigError, match="ca_key_label and ra_key_label must differ"):
        load_settings(None, ca={"key_backend": "pkcs11", "pkcs11_module": "/m.so", "pkcs11_token_label": "t",
                                "ra_key_label": "scep-ca"})
    with pytest.raises(ConfigError, match="key_type"):
        load_settings(None, ca={"key_type": "ec-p521"})
    ok = load_settings(None, ca={"key_backend": "pkcs11", "pkcs11_module": "/m.so", "pkcs11_token_label": "t"})
    assert (ok.ca.ca_key_label, ok.ca.ra_key_label, ok.ca.pkcs11_pin_env) == ("scep-ca", "scep-ra",
                                                                             "SCEP_CA_PKCS11_PIN")
