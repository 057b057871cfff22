"""Partitioned CRLs through the full application: the CDP names the partition, the partition CRL is served,
re-signed alone after a revocation, accepted by OpenSSL and pkilint; the full CRL stays complete."""
from __future__ import annotations

import time

import aiohttp
import pytest
from cryptography import x509

from scep_server.ca.inventory import Reason, serial_hex
from tests.server import run, start_app

from .conftest import FAST_CRL, ca_pem_path, cdp_of, crl_serials, enrol_with_codec, fetch, openssl_verify, wait_for

# 400 expected certificates of 100 each: 4 partitions
PARTITIONED = {**FAST_CRL, "partitioning": True, "partition_target_size": 100, "partition_expected_certificates": 400}
COUNT = 4


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=PARTITIONED)
    crl = srv.runtime.crl
    await crl.publishers["default"].wait_newer(None, timeout=10)
    for pub in crl.partitions["default"].publishers.values():
        await pub.wait_newer(None, timeout=10)
    return srv


def partition_url(srv, partition: int) -> str:
    return f"{srv.url}/crl/default/{partition}.crl"


def number_of(der: bytes) -> int:
    return x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def test_a_revocation_reaches_its_partition_only_and_the_full_crl(server, openssl, lint_crl, tmp_path):
    assert server.runtime.cas["default"].crl_partitions == COUNT
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, server.url, server.challenge(), "partitioned-device")
        _, other = await enrol_with_codec(session, server.url, server.challenge(), "other-device")
        part = cert.serial_number % COUNT
        url = cdp_of(cert)
        assert url == partition_url(server, part)  # the CDP names the certificate's partition

        # the partition CRL carries a critical IDP naming that same URL, only user certificates
        der = await fetch(session, url)
        crl = x509.load_der_x509_crl(der)
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical and [n.value for n in idp.value.full_name] == [url]
        assert idp.value.only_contains_user_certs and not idp.value.only_contains_ca_certs
        (tmp_path / "partition.der").write_bytes(der)
        rc, out, err = await run(lint_crl, "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING",
                                 str(tmp_path / "partition.der"))
        assert rc == 0 and not out.strip(), out + err

        ca_pem = ca_pem_path(server)
        rc, out = await openssl_verify(openssl, ca_pem, der, cert, tmp_path / "v0")
        assert rc == 0 and ": OK" in out, out

        before = {p: number_of(await fetch(session, partition_url(server, p))) for p in range(COUNT)}
        started = time.monotonic()
        await server.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="test")

        async def listed():
            body = await fetch(session, url)
            return body if cert.serial_number in crl_serials(body) else None

        der, _ = await wait_for(listed, timeout=10)
        print(f"revoke -> on its partition's served CRL: {(time.monotonic() - started) * 1000:.0f} ms")
        rc, out = await openssl_verify(openssl, ca_pem, der, cert, tmp_path / "v1")
        assert rc != 0 and "certificate revoked" in out, out
        if other.serial_number % COUNT == part:  # a certificate of the same partition still verifies
            rc, out = await openssl_verify(openssl, ca_pem, der, other, tmp_path / "v2")
            assert rc == 0 and ": OK" in out, out

        async def in_full():
            body = await fetch(session, f"{server.url}/crl/default.crl")
            return body if cert.serial_number in crl_serials(body) else None

        full, _ = await wait_for(in_full, timeout=10)
        assert x509.load_der_x509_crl(full).extensions.get_extension_for_class(x509.CRLNumber)
        with pytest.raises(x509.ExtensionNotFound):  # the full CRL has no scope
            x509.load_der_x509_crl(full).extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        for p in range(COUNT):
            body = await fetch(session, partition_url(server, p))
            if p == part:
                assert number_of(body) > before[p]
                continue
            assert cert.serial_number not in crl_serials(body)  # listed in its partition only
            assert number_of(body) == before[p]  # the other partitions were not re-signed
        assert server.runtime.crl.partitions["default"].resigned_after_change == 1


async def test_certificates_issued_before_partitioning_stay_on_the_full_crl(server):
    ca = server.runtime.cas["default"]
    ca.crl_partitions = None  # as a process that started before partitioning was turned on
    try:
        async with aiohttp.ClientSession() as session:
            _, cert = await enrol_with_codec(session, server.url, server.challenge(), "older-device")
    finally:
        ca.crl_partitions = COUNT
    assert cdp_of(cert) == f"{server.url}/crl/default.crl"
    await server.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.SUPERSEDED, actor="test")
    async with aiohttp.ClientSession() as session:
        async def in_full():
            body = await fetch(session, f"{server.url}/crl/default.crl")
            return cert.serial_number in crl_serials(body)

        await wait_for(in_full, timeout=10)
        for p in range(COUNT):
            assert cert.serial_number not in crl_serials(await fetch(session, partition_url(server, p)))


async def test_partition_routes(server):
    _, token = await server.runtime.tokens.create(scope="admin", name="cas", now=server.runtime.clock())
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/v1/cas", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            [ca] = (await resp.json())["cas"]
    assert ca["crl"]["partitions"] == {"count": COUNT, "ok": COUNT,
                                       "url": f"{server.url}/crl/default/{{partition}}.crl"}
    assert server.runtime.crl.readiness() == "ok"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/crl/default/1.pem") as resp:
            assert resp.status == 200 and resp.content_type == "application/x-pem-file"
            assert (await resp.read()).startswith(b"-----BEGIN X509 CRL-----")
        async with session.get(partition_url(server, 2)) as resp:
            etag = resp.headers["ETag"]
            assert "max-age=" in resp.headers["Cache-Control"]
        async with session.get(partition_url(server, 2), headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        async with session.head(partition_url(server, 0)) as resp:
            assert resp.status == 200
        for path in ("/crl/default/4.crl", "/crl/default/01.crl", "/crl/default/-1.crl", "/crl/default/x.crl",
                     "/crl/default/9999999999999.crl", "/crl/other/0.crl"):
            async with session.get(server.url + path) as resp:
                assert resp.status == 404, path
                assert "text/plain" in resp.headers["Content-Type"]


async def test_turned_off_later_the_recorded_partitions_stay_published(server, aiohttp_server, tmp_path, db_url):
    # a second instance on the same data directory and database, with partitioning off in its settings
    off = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL)
    assert off.runtime.crl_partitions == {"default": COUNT}  # certificates already name these partitions
    assert off.runtime.cas["default"].crl_partitions is None
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, off.url, off.challenge(), "after-off")
        assert cdp_of(cert) == f"{off.url}/crl/default.crl"

        async def served():
            async with session.get(f"{off.url}/crl/default/3.crl") as resp:
                return resp.status == 200

        await wait_for(served, timeout=10)

        # a revocation in the first instance reaches the partition CRL the second one serves (adopted, not signed)
        _, cert = await enrol_with_codec(session, server.url, server.challenge(), "before-off")
        part = cert.serial_number % COUNT
        await server.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="test")

        async def listed_by_the_other():
            body = await fetch(session, f"{off.url}/crl/default/{part}.crl")
            return body if cert.serial_number in crl_serials(body) else None

        await wait_for(listed_by_the_other, timeout=10)

        async def the_same():  # both serve one CRL: one number sequence per partition across processes
            a = await fetch(session, f"{server.url}/crl/default/{part}.crl")
            return a == await fetch(session, f"{off.url}/crl/default/{part}.crl")

        await wait_for(the_same, timeout=10)
    # a later setting never changes a recorded count: serials stay in their partition
    from crl.partitions import record_partitioning
    assert await record_partitioning(off.runtime.engine, "default", 7, off.runtime.clock()) == COUNT


async def test_a_revocation_from_the_command_line_reaches_its_partition(server):
    """`scep-server cert revoke` runs in a process of its own: the server steps in for it and signs the full CRL,
    and the partition CRL that the certificate's CDP names lists it as soon."""
    import asyncio

    from scep_server.runtime import Uses, open_runtime

    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, server.url, server.challenge(), "cli-partition")
        url = cdp_of(cert)
        assert "/crl/default/" in url
        await asyncio.sleep(1.0)  # the enrolment's own notice has come and gone
        async with open_runtime(server.settings, uses=Uses(revocation=True)) as cli:  # what `cert revoke` opens
            await cli.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="cli")
        deadline = time.monotonic() + 10
        while True:
            full = cert.serial_number in crl_serials(await fetch(session, f"{server.url}/crl/default.crl"))
            part = cert.serial_number in crl_serials(await fetch(session, url))
            if full and part:
                break
            assert time.monotonic() < deadline, f"after 10 s: on the full CRL {full}, on its partition's {part}"
            await asyncio.sleep(0.1)


async def test_a_running_instance_serves_the_partitions_another_records_later(aiohttp_server, tmp_path, db_url):
    """An instance started before partitioning was recorded (another instance restarted with it on) serves the
    partition CRLs the new certificates name, and the revocations on them, without a restart."""
    old = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL)
    assert old.runtime.crl_partitions == {}
    new = await start_app(aiohttp_server, tmp_path, db_url, crl=PARTITIONED)
    assert new.runtime.crl_partitions == {"default": COUNT}
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, new.url, new.challenge(), "partitioned-later")
        path = cdp_of(cert).split(new.url, 1)[1]
        assert path.startswith("/crl/default/")

        async def served():
            async with session.get(old.url + path) as resp:
                return resp.status == 200

        await wait_for(served, timeout=10)
        assert old.runtime.crl.partitions["default"].count == COUNT
        await new.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="test")

        async def listed_by_the_old_one():
            return cert.serial_number in crl_serials(await fetch(session, old.url + path))

        await wait_for(listed_by_the_old_one, timeout=10)

    async def ready():
        return old.runtime.crl.readiness() == "ok"

    await wait_for(ready, timeout=10)  # its readiness covers the partitions it now publishes


async def test_a_ca_picked_up_after_a_rollover_publishes_its_partitions(server, aiohttp_server, tmp_path, db_url):
    """A rollover activated in a partitioning instance: the new CA's count is recorded and its certificates name
    its partitions, which that instance serves, and so does an instance with partitioning off once it picks the
    CA up, without a restart."""
    from scep_server.ca.lifecycle import activate_rollover, pick_up_cas, prepare_rollover
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from tests.factories import csr, rsa_key

    off = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL)
    await prepare_rollover(server.runtime, "default", actor="test")
    assert (await activate_rollover(server.runtime, "default", actor="test"))["active"] == "default-g2"
    new_ca = server.runtime.cas["default-g2"]
    assert new_ca.crl_partitions == COUNT
    assert server.runtime.crl.partitions["default-g2"].count == COUNT
    assert await pick_up_cas(off.runtime) == ["default-g2"]
    assert off.runtime.cas["default-g2"].crl_partitions is None  # partitioning off there: it names none itself
    issued = new_ca.issue(csr(rsa_key(), "after-rollover"), IssuancePolicy(CertificateTemplate()), serial=0x4242,
                          now=server.runtime.clock())
    assert cdp_of(issued) == f"{server.url}/crl/default-g2/{0x4242 % COUNT}.crl"
    async with aiohttp.ClientSession() as session:
        for srv in (server, off):
            for part in range(COUNT):
                async def served(url=f"{srv.url}/crl/default-g2/{part}.crl"):
                    async with session.get(url) as resp:
                        return resp.status == 200

                await wait_for(served, timeout=10)



async def test_a_renewed_ra_keeps_the_cas_partitions(server):
    """The CA object an RA renewal rebuilds names its certificates' partitions as before."""
    from scep_server.ca.lifecycle import renew
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from tests.factories import csr, rsa_key

    before = server.runtime.cas["default"]
    await renew(server.runtime, "default", actor="test")
    after = server.runtime.cas["default"]
    assert after.ra_cert.serial_number != before.ra_cert.serial_number
    assert after.crl_partitions == COUNT
    issued = after.issue(csr(rsa_key(), "after-ra-renewal"), IssuancePolicy(CertificateTemplate()), serial=0x4343,
                         now=server.runtime.clock())
    assert cdp_of(issued) == f"{server.url}/crl/default/{0x4343 % COUNT}.crl"


async def test_a_failing_partition_refresh_does_not_stop_the_watcher_re_signing():
    """The change watcher's two steps fail alone: a partition count it cannot publish does not keep it from
    re-signing after another process's status change."""
    import asyncio
    import types
    from datetime import timedelta

    from scep_server.crlwiring.jobs import change_watcher

    marker_checks = []

    async def refresh_partitioning():
        raise ValueError("a partition count this process refuses")

    async def check_marker():
        marker_checks.append(1)

    service = types.SimpleNamespace(settings=types.SimpleNamespace(poll_interval=timedelta(seconds=0.02)),
                                    check_due=None, watch_wake=asyncio.Event(),
                                    refresh_partitioning=refresh_partitioning, check_marker=check_marker)
    task = asyncio.create_task(change_watcher(service)())
    try:
        async def checked():
            return len(marker_checks) >= 2

        await wait_for(checked, timeout=5)
    finally:
        task.cancel()
