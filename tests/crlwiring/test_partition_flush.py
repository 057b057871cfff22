"""A server that stops within the coalescing delay of a status change it made signs it on the way out (CrlService
.flush) on the partition CRL its certificate's CDP names as well as on the full CRL: the other instances adopt
what it recorded, and none of them would sign the partition (the full CRL shows the change)."""
from __future__ import annotations

import aiohttp
from cryptography import x509

from crl.store import CrlStateStore
from scep_server.ca.inventory import Reason, serial_hex
from tests.server import start_app

from .conftest import cdp_of, enrol_with_codec
from .test_partitions import COUNT, PARTITIONED

SLOW = {**PARTITIONED, "coalesce_delay": 30, "poll_interval": 60}


async def test_flush_signs_the_changed_partition_too(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=SLOW)
    crl = srv.runtime.crl
    for pub in crl.partitions["default"].publishers.values():
        await pub.wait_newer(None, timeout=10)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "flushed")
    part = cert.serial_number % COUNT
    assert cdp_of(cert).endswith(f"/crl/default/{part}.crl")
    await srv.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="api:test")
    await crl.flush()  # what the server does as it stops
    full = await CrlStateStore(srv.runtime.engine, "default").load()
    assert cert.serial_number in {r.serial_number for r in x509.load_der_x509_crl(full.der)}
    stored = await CrlStateStore(srv.runtime.engine, f"default/{part}").load()
    assert cert.serial_number in {r.serial_number for r in x509.load_der_x509_crl(stored.der)}, \
        "the partition CRL recorded on the way out does not list the revocation"


async def test_flush_signs_the_changed_partition_when_the_full_crl_was_signed_already(aiohttp_server, tmp_path,
                                                                                      db_url):
    """The full CRL's re-sign for the change has run, its partition's had not (both wait out the coalescing delay;
    the stop cancels what is running): the partition is signed on the way out all the same."""
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=SLOW)
    crl = srv.runtime.crl
    for pub in crl.partitions["default"].publishers.values():
        await pub.wait_newer(None, timeout=10)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "flushed-late")
    part = cert.serial_number % COUNT
    await srv.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="api:test")
    await crl.publishers["default"].publish_now()  # the full CRL's loop got there first
    await crl.flush()
    stored = await CrlStateStore(srv.runtime.engine, f"default/{part}").load()
    assert cert.serial_number in {r.serial_number for r in x509.load_der_x509_crl(stored.der)}, \
        "the partition CRL recorded on the way out does not list the revocation"
