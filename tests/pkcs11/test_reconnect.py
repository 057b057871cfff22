"""The token goes away under a running process and comes back: the sessions are reopened, the operation is tried
once more, concurrent callers wait for one reopening; while it is away operations fail at once (a 503)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from scep_server.ca.pkcs11 import TokenUnavailable, _call_lock
from trustkit.problems import ServiceUnavailable

from .test_keys import keys


@pytest.fixture
def store(softhsm):
    s = keys(softhsm, pool_size=3)
    s.ca_key(create=("ec-p256", 0))
    s.ra_key(create=("rsa", 2048))
    s.pool.backoff = (0.3, 0.3)
    yield s
    s.close()


def works(store) -> None:
    """The CA key signs and the RA key decrypts, in the token."""
    ca, ra = store.ca_key(), store.ra_key()
    ca.public_key().verify(ca.sign(b"tbs", hashes.SHA256()), b"tbs", ec.ECDSA(hashes.SHA256()))
    cek = os.urandom(16)
    assert ra.decrypt(ra.public_key().encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek


def restart(softhsm, *, finalise_only: bool = False) -> None:
    """What a restarted token does to a process: every session and login it held is gone."""
    lib = pkcs11.lib(softhsm.module)
    with _call_lock(softhsm.module):
        if finalise_only:
            lib.finalize()  # CKR_CRYPTOKI_NOT_INITIALIZED until the module is initialised again
        else:
            lib.reinitialize()  # C_Finalize, C_Initialize: CKR_SESSION_HANDLE_INVALID on the old sessions


@pytest.mark.parametrize("finalise_only", [False, True])
def test_signing_and_decryption_work_again_after_the_token_restarts(softhsm, store, finalise_only):
    ca, ra = store.ca_key(), store.ra_key()
    works(store)
    old = list(store.pool._state.all)
    restart(softhsm, finalise_only=finalise_only)
    with pytest.raises(pkcs11.PKCS11Error):  # the sessions the process held are really gone
        old[0].generate_random(64)
    # the keys made before the restart: their first operation reopens the sessions and succeeds
    ca.public_key().verify(ca.sign(b"after", hashes.SHA256()), b"after", ec.ECDSA(hashes.SHA256()))
    cek = os.urandom(24)
    assert ra.decrypt(ra.public_key().encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek
    assert (store.pool.reconnects, store.pool.generation, store.pool.size) == (1, 2, 3)
    works(store)
    assert store.pool.reconnects == 1


def test_concurrent_callers_wait_for_one_reopening(softhsm, store):
    ca, ra = store.ca_key(), store.ra_key()
    cek = os.urandom(16)
    wrapped = ra.public_key().encrypt(cek, padding.PKCS1v15())
    restart(softhsm)
    start = threading.Barrier(8)
    results: list[object] = []

    def work(i: int) -> None:
        start.wait()
        try:
            if i % 2:
                results.append(ra.decrypt(wrapped, "pkcs1v15") == cek)
            else:
                ca.public_key().verify(ca.sign(b"%d" % i, hashes.SHA256()), b"%d" % i, ec.ECDSA(hashes.SHA256()))
                results.append(True)
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 8
    assert store.pool.reconnects == 1  # one thread reopened, the others used its sessions


def test_a_token_that_stays_away_fails_fast_then_is_found_again(softhsm, store):
    ca = store.ca_key()
    works(store)
    tokens = softhsm.directory / "tokens"
    saved = softhsm.directory / "saved"
    shutil.copytree(tokens, saved)
    env = {"SOFTHSM2_CONF": str(softhsm.directory / "softhsm2.conf"), "PATH": "/usr/bin:/bin"}
    with _call_lock(softhsm.module):
        subprocess.run(["softhsm2-util", "--delete-token", "--token", softhsm.label], check=True,
                       capture_output=True, env=env)

    with pytest.raises(TokenUnavailable, match=f"token '{softhsm.label}' is unavailable") as failed:
        ca.sign(b"tbs", hashes.SHA256())
    assert isinstance(failed.value, ServiceUnavailable) and failed.value.status == 503
    assert store.probe().startswith("error: ")
    # within the back-off: refused at once, the token is not asked again
    began = time.monotonic()
    with pytest.raises(TokenUnavailable, match="next attempt in"):
        ca.sign(b"tbs", hashes.SHA256())
    assert time.monotonic() - began < 0.1
    time.sleep(0.35)
    with pytest.raises(TokenUnavailable, match="is unavailable"):  # tried again after it: still away
        store.ra_key().decrypt(b"\0" * 256, "pkcs1v15")
    assert store.pool.reconnects == 0

    shutil.rmtree(tokens)
    shutil.copytree(saved, tokens)  # the token is back
    time.sleep(0.35)
    assert store.probe() == "ok"
    works(store)
    assert store.pool.reconnects == 1


def test_an_operation_that_is_refused_is_not_retried_and_a_hung_token_times_out(softhsm, store):
    ra = store.ra_key()
    with pytest.raises(pkcs11.PKCS11Error) as refused:
        ra.decrypt(os.urandom(256), "pkcs1v15")
    assert not isinstance(refused.value, TokenUnavailable)
    assert store.pool.reconnects == 0 and store.pool.generation == 1
    ca = store.ca_key()
    store.pool.timeout = 0.2
    errors: list[BaseException] = []

    def sign() -> None:
        try:
            ca.sign(b"x", hashes.SHA256())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with _call_lock(softhsm.module):  # another call holds the module and does not return
        t = threading.Thread(target=sign)
        t.start()
        t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], TokenUnavailable)
    assert "did not answer within 0.2 s" in str(errors[0])
