"""SCEP's CPU work runs on the service's own bounded executor, not the loop's default one."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from scep_server.enrolment import ScepService
from scep_server.profiles import ProfileStore
from scep_server.scep import PKIStatus, client
from tests.challenge.conftest import build
from tests.factories import rsa_key

from .conftest import SECRET, static_profile


async def test_enrolment_completes_while_the_default_executor_is_saturated(server):
    await static_profile(server, "p")
    loop = asyncio.get_running_loop()
    release = threading.Event()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    blocked = loop.run_in_executor(None, release.wait)  # everything else that uses the default pool waits
    try:
        key = rsa_key()
        body = build(server, key, challenge=SECRET, cn="busy")
        reply = await asyncio.wait_for(server.runtime.scep.pki_operation("p", body), 20)
        ca = server.runtime.cas["default"]
        assert client.parse_cert_rep(reply, key, ra_cert_der=ca.ra_cert_der).status is PKIStatus.SUCCESS
    finally:
        release.set()
        await blocked


async def test_the_executor_is_sized_by_settings_and_shut_down_with_the_service(engine):
    from scep_server.enrolment import scep_threads

    scep = ScepService(engine=engine, cas={}, profiles=ProfileStore(engine), threads=3)
    assert scep._executor._max_workers == 3
    assert ScepService(engine=engine, cas={}, profiles=ProfileStore(engine))._executor._max_workers == scep_threads()
    assert await scep._run(lambda: threading.current_thread().name.startswith("scep"))
    await scep.close()
    assert scep._executor._shutdown
