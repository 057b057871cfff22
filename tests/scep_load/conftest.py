"""Client material for the SCEP load tests: 200 distinct RSA-2048 keys, made once per test session.

Generating 200 RSA-2048 keys takes 12 s or more on two cores, so the keys are assembled from the primes of a
few generated keys instead: every pair (p, q) of 1024-bit primes gives a distinct modulus, hence a distinct
key; 21 primes (11 generated keys) give 210 keys. Sharing primes between keys is fine for test clients only.
"""
from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_COUNT = 200


def distinct_keys(n: int) -> list[rsa.RSAPrivateKey]:
    """`n` RSA-2048 private keys with pairwise distinct moduli."""
    primes: list[int] = []
    while len(primes) * (len(primes) - 1) // 2 < n:
        numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
        primes += [numbers.p, numbers.q]
    keys = []
    e = 65537
    for p, q in itertools.combinations(primes, 2):
        if len(keys) == n:
            break
        modulus = p * q
        if modulus.bit_length() != 2048:
            continue
        d = pow(e, -1, (p - 1) * (q - 1))
        keys.append(rsa.RSAPrivateNumbers(
            p=p, q=q, d=d, dmp1=rsa.rsa_crt_dmp1(d, p), dmq1=rsa.rsa_crt_dmq1(d, q), iqmp=rsa.rsa_crt_iqmp(p, q),
            public_numbers=rsa.RSAPublicNumbers(e, modulus)).private_key(
            unsafe_skip_rsa_key_validation=True))  # p and q come from keys OpenSSL generated and checked
    if len(keys) < n:  # a product one bit short for every remaining pair: extremely unlikely
        keys += distinct_keys(n - len(keys))
    return keys


@pytest.fixture(scope="session")
def client_keys() -> list[rsa.RSAPrivateKey]:
    keys = distinct_keys(KEY_COUNT)
    assert len({k.public_key().public_numbers().n for k in keys}) == KEY_COUNT
    return keys
