"""Micro-benchmark of the SCEP codec per enrolment, with and without its RSA operations (not a test).

Run: .venv/bin/python tests/scep/profile_codec.py [--cprofile]
Prints µs per parse_pki_message, decrypt_envelope and build_cert_rep, the RSA operations they contain
(measured alone), and the non-RSA remainder per enrolment.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402

from scep_server.scep import (ContentCipher, Digest, MessageType, PKIStatus, build_cert_rep,  # noqa: E402
                              build_degenerate, decrypt_envelope, parse_pki_message, rsa_padding)
from scep_server.scep import client  # noqa: E402


def per_call(fn, n: int) -> float:
    """Best-of-5 mean µs per call over n calls."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--cipher", default="AES128_CBC", choices=[c.name for c in ContentCipher])
    ap.add_argument("--digest", default="SHA256", choices=[d.name for d in Digest])
    ap.add_argument("--cprofile", action="store_true", help="print the top functions of the non-RSA path")
    args = ap.parse_args()
    cipher, digest = ContentCipher[args.cipher], Digest[args.digest]

    ra_key = rsa.generate_private_key(65537, 2048)
    ra_der = client.make_self_signed_signer(ra_key, "Bench RA")
    dev_key = rsa.generate_private_key(65537, 2048)
    signer_der = client.make_self_signed_signer(dev_key)
    csr = client.make_csr(dev_key, "device-0001", challenge="secret", sans=["device-0001.example"])
    req = client.build_request(MessageType.PKCS_REQ, content=csr, signer_cert_der=signer_der, signer_key=dev_key,
                               recipient_cert_der=ra_der, transaction_id="T" * 40, sender_nonce=os.urandom(16),
                               cipher=cipher, digest=digest, cek=os.urandom(cipher.key_size),
                               iv=os.urandom(cipher.block_size))
    issued = signer_der  # any ~1 KB certificate stands in for the issued one
    bundle = build_degenerate([issued])
    now = datetime.now(timezone.utc)
    msg = parse_pki_message(req)
    real_cek = [None]

    def rsa_cek(ek: bytes, scheme: str) -> bytes:
        return ra_key.decrypt(ek, rsa_padding(scheme))

    real_cek[0] = rsa_cek(msg._envelope.recipients[0].encrypted_key, "pkcs1v15")
    fake_sig = ra_key.sign(b"x", padding.PKCS1v15(), digest.reply.hash_algorithm())
    cek32, iv16 = os.urandom(32), os.urandom(16)

    def parse():
        return parse_pki_message(req)

    def decrypt():
        return decrypt_envelope(msg, lambda ek, s: real_cek[0], recipient_cert_der=ra_der)

    def build():
        return build_cert_rep(request=msg, status=PKIStatus.SUCCESS, ra_cert_der=ra_der, sign=lambda d, h: fake_sig,
                              sender_nonce=iv16, signing_time=now, content=bundle, cek=cek32, iv=iv16)

    def build_failure():
        return build_cert_rep(request=msg, status=PKIStatus.FAILURE, ra_cert_der=ra_der, sign=lambda d, h: fake_sig,
                              sender_nonce=iv16, signing_time=now, fail_info=2, fail_text="bad challenge")

    dev_pub = x509.load_der_x509_certificate(signer_der).public_key()
    sig = dev_key.sign(b"attrs", padding.PKCS1v15(), digest.hash_algorithm())
    n = args.n
    t_parse = per_call(parse, n)
    t_decrypt = per_call(decrypt, n)
    t_build = per_call(build, n)
    t_fail = per_call(build_failure, n)
    t_verify = per_call(lambda: dev_pub.verify(sig, b"attrs", padding.PKCS1v15(), digest.hash_algorithm()), n)
    t_encrypt = per_call(lambda: dev_pub.encrypt(cek32[:16], padding.PKCS1v15()), n)
    t_private = per_call(lambda: ra_key.sign(b"x", padding.PKCS1v15(), digest.reply.hash_algorithm()), max(n // 5, 20))

    non_rsa = (t_parse - t_verify) + t_decrypt + (t_build - t_encrypt)
    print(f"SCEP codec per enrolment ({cipher.name}, {digest.name}, request {len(req)} bytes, n={n}, best of 5)")
    print(f"  parse_pki_message        {t_parse:8.1f} µs  (includes RSA-2048 public verify {t_verify:.1f} µs)")
    print(f"  decrypt_envelope         {t_decrypt:8.1f} µs  (RSA private decrypt of the CEK excluded)")
    print(f"  build_cert_rep SUCCESS   {t_build:8.1f} µs  (includes RSA-2048 public encrypt {t_encrypt:.1f} µs; "
          f"signature excluded)")
    print(f"  build_cert_rep FAILURE   {t_fail:8.1f} µs  (signature excluded)")
    print(f"  non-RSA codec work       {non_rsa:8.1f} µs per enrolment (target < 300 µs)")
    print(f"  for scale: one RSA-2048 private operation = {t_private:.1f} µs (an enrolment needs 3)")

    if args.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            parse()
            decrypt()
            build()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
