"""A customer CA's CRL is fetched on first sight of its CDP during an attestation: whatever the CDP is or
serves, the answer is the policy's verdict, never an error, and nothing non-public is connected to."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import crl.check as check_module
from tests.binding.test_external import OpensslCa, add_external, crl_server  # noqa: F401 - fixture

pytestmark = pytest.mark.interop

UTC = timezone.utc


async def test_a_cdp_on_a_metadata_address_is_not_fetched(server, api, openssl, crl_server, tmp_path, clock):
    ca = OpensslCa(openssl, tmp_path / "ca", "Metadata", "http://169.254.169.254/latest/meta-data/")
    await ca.create()
    rc, out = await add_external(server, "metadata", ca.dir / "ca.pem", "fail-closed")
    assert rc == 0, out
    pem, key = await ca.leaf("dev", 7)
    await api.add_device("dev-1")
    clock.now = datetime.now(UTC) + timedelta(seconds=5)
    res = await api.attest("dev-1", pem, key)
    assert (res["managed"], res["reason"]) == (False, "crl_unavailable"), res
    [status] = server.runtime.binding.external.checker.status()
    assert status.last_failure is check_module.FailureKind.FORBIDDEN_DESTINATION


@pytest.mark.parametrize("policy,managed", [("fail-closed", False), ("fail-open", True)])
async def test_a_parser_fault_on_first_fetch_is_the_policys_verdict(server, api, openssl, crl_server, tmp_path,
                                                                    clock, monkeypatch, policy, managed):
    ca = OpensslCa(openssl, tmp_path / "ca", "Faulty", crl_server.url("faulty.crl"))
    await ca.create()
    rc, out = await add_external(server, "faulty", ca.dir / "ca.pem", policy)
    assert rc == 0, out
    crl_server.crls["faulty.crl"] = ca.crl()
    pem, key = await ca.leaf("dev", 7)
    await api.add_device("dev-1")
    clock.now = datetime.now(UTC) + timedelta(seconds=5)

    def broken(data):
        raise IndexError("parser fault")

    monkeypatch.setattr(check_module, "parse_crl", broken)
    res = await api.attest("dev-1", pem, key)  # a 500 would fail inside api.attest (expects 200)
    assert (res["managed"], res["crl"]["status"]) == (managed, "unknown"), res
    assert crl_server.hits == 1
