"""Seeds and a structure-aware mutator for the DER fuzz tests and bench/fuzz.py.

The seeds are valid messages: a PKCSReq, a CertPoll and a GetCRL (the project's client codec, RSA-2048),
and a CRL with entries and extensions (cryptography). ``mutate`` applies one to three of: bit flips,
truncations, length changes, splices, oversized OIDs, indefinite lengths and deep nesting, placing them at
the elements of the seed's TLV tree so that most mutants get past the first checks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scep_server.scep import MessageType, client
from trustkit import der

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Seeds:
    key: rsa.RSAPrivateKey
    ra_key: rsa.RSAPrivateKey
    ra_der: bytes
    scep: tuple[bytes, ...]
    crl: bytes


def _self_signed(key, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def scep_request(key, ra_der: bytes, message_type=MessageType.PKCS_REQ, *, content: bytes | None = None,
                 challenge: str = "secret", cn: str = "fuzz-device", transaction_id: str = "FUZZ-TID") -> bytes:
    """A request pkiMessage to ``ra_der`` signed by a self-signed certificate for ``key``."""
    if content is None:
        content = client.make_csr(key, cn, challenge=challenge, sans=[f"{cn}.example"])
    return client.build_request(
        message_type, content=content, signer_cert_der=client.make_self_signed_signer(key, cn=cn),
        signer_key=key, recipient_cert_der=ra_der, transaction_id=transaction_id, sender_nonce=bytes(range(16)),
        cek=bytes(range(16)), iv=bytes(16), signing_time=NOW)


def crl_seed(ca_key, ca_cert: x509.Certificate) -> bytes:
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(NOW).next_update(NOW + timedelta(days=7))
         .add_extension(x509.CRLNumber(42), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
         .add_extension(x509.IssuingDistributionPoint(
             full_name=[x509.UniformResourceIdentifier("http://127.0.0.1/crl/fuzz.crl")], relative_name=None,
             only_contains_user_certs=True, only_contains_ca_certs=False, only_some_reasons=None,
             indirect_crl=False, only_contains_attribute_certs=False), critical=True))
    for serial, reason in ((1000, None), (2000, x509.ReasonFlags.key_compromise),
                           (3000, x509.ReasonFlags.certificate_hold), (4000, x509.ReasonFlags.superseded)):
        e = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(days=1))
        if reason is not None:
            e = e.add_extension(x509.CRLReason(reason), critical=False)
        if serial == 4000:
            e = e.add_extension(x509.InvalidityDate(datetime(2025, 5, 1)), critical=False)
        b = b.add_revoked_certificate(e.build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@lru_cache(maxsize=1)
def seeds() -> Seeds:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ra_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ra_cert = _self_signed(ra_key, "Fuzz RA")
    ra_der = ra_cert.public_bytes(serialization.Encoding.DER)
    signer = x509.load_der_x509_certificate(client.make_self_signed_signer(key, cn="fuzz-device"))
    issuer_der = signer.issuer.public_bytes()
    poll = der.seq(issuer_der, signer.subject.public_bytes())
    get_crl = der.seq(issuer_der, der.integer(123456789))
    reqs = (scep_request(key, ra_der), scep_request(key, ra_der, MessageType.CERT_POLL, content=poll),
            scep_request(key, ra_der, MessageType.GET_CRL, content=get_crl))
    return Seeds(key, ra_key, ra_der, reqs, crl_seed(ra_key, ra_cert))


# ---------------------------------------------------------------- mutations

Node = tuple[der.Element, int]  # an element and the index of its parent (-1 for the outermost)


def elements(data: bytes) -> list[Node]:
    """Every TLV of a well-formed message, outermost first, with encapsulated DER (envelope, extensions)."""
    out: list[Node] = []

    def walk(el: der.Element, parent: int, depth: int) -> None:
        me = len(out)
        out.append((el, parent))
        if depth > 40:
            return
        if el[0] & der.CONSTRUCTED:
            for k in der.children(data, el):
                walk(k, me, depth + 1)
        elif el[0] in (der.OCTET_STRING, der.BIT_STRING) and el[3] > el[2]:
            start = el[2] + (1 if el[0] == der.BIT_STRING else 0)
            try:
                inner = der.read(data, start, el[3])
            except der.DERError:
                return
            if inner[4] == el[3] and inner[0] & der.CONSTRUCTED:
                walk(inner, me, depth + 1)

    try:
        walk(der.read_one(data), -1, 0)
    except der.DERError:
        return []
    return out


def replace_element(data: bytes, nodes: list[Node], i: int, new: bytes) -> bytes:
    """``data`` with element ``i`` replaced by ``new``, every enclosing definite length re-encoded."""
    el, parent = nodes[i]
    lo, hi, piece = el[1], el[4], new
    while parent != -1:
        pel, parent_next = nodes[parent]
        content = data[pel[2]:lo] + piece + data[hi:pel[3]]
        if data[pel[1] + 1] == 0x80:  # indefinite: the end-of-contents octets stay
            piece = data[pel[1]:pel[2]] + content + data[pel[3]:pel[4]]
        else:
            piece = data[pel[1]:pel[1] + 1] + der.encode_length(len(content)) + content
        lo, hi, parent = pel[1], pel[4], parent_next
    return data[:lo] + piece + data[hi:]


def _pick(nodes: list[Node], rng: random.Random, want=None) -> int:
    chosen = [i for i, (el, _) in enumerate(nodes) if want(el)] if want else []
    return rng.choice(chosen) if chosen else rng.randrange(len(nodes))


def _oversized_oid(data, nodes, rng):
    i = _pick(nodes, rng, lambda el: el[0] == der.OID)
    n = rng.choice((65, 200, 4096, 60000, rng.randrange(2, 60000)))
    fill = rng.choice((b"\xff", b"\x81", b"\x7f", bytes((rng.randrange(128, 256),))))
    return replace_element(data, nodes, i, der.tlv(der.OID, b"\x2a" + fill * (n - 2) + b"\x01"))


def _indefinite(data, nodes, rng):
    i = _pick(nodes, rng, lambda el: el[0] & der.CONSTRUCTED)
    el = nodes[i][0]
    return replace_element(data, nodes, i, bytes((el[0] | der.CONSTRUCTED, 0x80)) + data[el[2]:el[3]] + b"\x00\x00")


def _nesting(data, nodes, rng):
    i = _pick(nodes, rng)
    el = nodes[i][0]
    depth = rng.choice((10, 39, 41, 100, 1000, rng.randrange(2, 3000)))
    tag = rng.choice((0x30, 0x24, 0xA0, el[0] | der.CONSTRUCTED))
    inner = data[el[1]:el[4]]
    if rng.random() < 0.5:
        new = bytes((tag, 0x80)) * depth + inner + b"\x00\x00" * depth
    else:
        new = inner
        for _ in range(min(depth, 300)):
            new = der.tlv(tag, new)
    return replace_element(data, nodes, i, new)


def _many_children(data, nodes, rng):
    i = _pick(nodes, rng, lambda el: el[0] & der.CONSTRUCTED)
    el = nodes[i][0]
    child = rng.choice((b"\x04\x00", b"\x30\x00", b"\x06\x01\x2a", b"\x24\x80\x00\x00",
                        b"\x31\x80\x30\x80\x00\x00\x00\x00"))
    count = rng.choice((100, 1000, 10000, 30000))
    return replace_element(data, nodes, i, der.tlv(el[0] | der.CONSTRUCTED, child * count))


def _length(data, nodes, rng):
    el = nodes[_pick(nodes, rng)][0]
    hdr = rng.choice((b"\x80", b"\x81\xff", b"\x82\xff\xff", b"\x84\xff\xff\xff\xff", b"\x85\x01\x00\x00\x00\x00",
                      b"\xff", bytes((rng.randrange(256),)), b"\x81\x05", b"\x82\x00\x05"))
    return data[:el[1] + 1] + hdr + data[el[2]:]


def _bitflip(data, nodes, rng):
    b = bytearray(data)
    for _ in range(rng.randrange(1, 9)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(data, nodes, rng):
    if rng.random() < 0.3:
        return data[:rng.randrange(len(data))]
    i = _pick(nodes, rng)
    el = nodes[i][0]
    return replace_element(data, nodes, i, data[el[1]:rng.randrange(el[1], el[4] + 1)])


def _splice(data, nodes, rng):
    i, j = _pick(nodes, rng), _pick(nodes, rng)
    a, b = nodes[i][0], nodes[j][0]
    piece = data[b[1]:b[4]]
    if rng.random() < 0.5:
        return replace_element(data, nodes, i, piece)
    return replace_element(data, nodes, i, piece * rng.randrange(1, 4) + data[a[1]:a[4]])


def _tag(data, nodes, rng):
    i = _pick(nodes, rng)
    el = nodes[i][0]
    new_tag = rng.choice((0x1F, 0x3F, 0x9F, 0x04, 0x24, 0x06, 0x17, 0x18, 0x0C, 0x1E, 0x1C, rng.randrange(256)))
    extra = b"\x81\x80\x01" if new_tag & 0x1F == 0x1F else b""
    return replace_element(data, nodes, i, bytes((new_tag,)) + extra + data[el[1] + 1:el[4]])


def _time(data, nodes, rng):
    i = _pick(nodes, rng, lambda el: el[0] in (der.UTC_TIME, der.GENERALIZED_TIME))
    body = rng.choice((b"\xff\xfe250601120000Z", b"2506011200", b"20250601120000.xZ", b"20250601120000.Z",
                       b"99999999999999Z", b"-1-1-1-1-1-1Z", b" 5 6 1 1 1 1Z", b"250631120000Z", b"\xd9\xa3" * 6 + b"Z",
                       b"20250601120000." + b"9" * 5000 + b"Z", bytes(rng.randrange(256) for _ in range(13))))
    return replace_element(data, nodes, i, der.tlv(rng.choice((der.UTC_TIME, der.GENERALIZED_TIME)), body))


def _integer(data, nodes, rng):
    i = _pick(nodes, rng, lambda el: el[0] == der.INTEGER)
    n = rng.choice((0, 21, 22, 300, 5000, 40000))
    return replace_element(data, nodes, i, der.tlv(der.INTEGER, b"\x7f" + b"\xff" * n if n else b""))


MUTATIONS = (_bitflip, _truncate, _length, _splice, _oversized_oid, _indefinite, _nesting, _many_children,
             _tag, _time, _integer)


def mutate(data: bytes, rng: random.Random, nodes: list[Node] | None = None) -> bytes:
    """One to three mutations of ``data`` (a well-formed message), each placed at one of its elements."""
    nodes = nodes if nodes is not None else elements(data)
    out = data
    for step in range(rng.choice((1, 1, 1, 2, 3))):
        if step:
            nodes = elements(out) if len(out) < 200_000 else []
        if not nodes:  # the last mutation broke the structure: plain byte mutations only
            return _bitflip(out, nodes, rng) if out and rng.random() < 0.5 else out[:rng.randrange(len(out) + 1)]
        out = rng.choice(MUTATIONS)(out, nodes, rng)
    return out
