"""Model-based test of binding: random sequences of issue, renew, attest (any certificate, any claimed
device), lifecycle changes, certificate removal and revocations, checked step by step against a small
reference model of the trust rules (see scep_server/binding/attestation.py):

- no certificate binds to a device without evidence (the device has no current certificate, or the
  certificate renews the current one, or was enrolled for this device);
- no certificate is retired except by its own device's evidence-backed replacement, `remove-cert`, or the
  device's deletion;
- a certificate never serves two devices; a device has at most one current certificate;
- every answer is the one the model predicts.

On SQLite and PostgreSQL, a bounded number of short runs (a few seconds each).
"""
from __future__ import annotations

import asyncio
import base64
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from scep_server.binding.attestation import AttestationService, Verdict as V
from scep_server.binding.devices import DeviceStore
from scep_server.binding.errors import InvalidTransition
from scep_server.binding.tables import device_certs
from scep_server.ca import inventory
from scep_server.ca.inventory import Reason
from scep_server.ca.revocation import change_status
from scep_server.ca.status import CertStatus
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from trustkit.clock import SettableClock
from trustkit.db import create_engine, writer
from scep_server.store.tables import certificates
from tests.conftest import _truncate_pg
from tests.factories import NOW, csr, make_ca, record_issued, register_ca

from tests.binding.conftest import attesting_profile, sign

DEVICES = ("d0", "d1", "d2")
LIFECYCLE = {"suspend": ({"active"}, "suspended"), "unsuspend": ({"suspended"}, "active"),
             "deactivate": ({"active", "suspended"}, "deactivated"), "reactivate": ({"deactivated"}, "active"),
             "delete": ({"active", "suspended", "deactivated"}, "deleted")}


@dataclass
class Cert:
    serial: str
    key: object
    der: bytes
    trusted: bool
    renewal_of: "Cert | None" = None
    enrolled: str | None = None
    status: str = "valid"  # valid | hold | revoked (the inventory)


@dataclass
class Bound:
    device: str
    current: bool = True
    state: str = "active"
    reason: str | None = None


@dataclass
class Model:
    status: dict[str, str] = field(default_factory=lambda: {d: "active" for d in DEVICES})
    bound: dict[str, Bound] = field(default_factory=dict)  # serial -> binding

    def current(self, device: str) -> str | None:
        return next((s for s, b in self.bound.items() if b.device == device and b.current), None)

    def retire(self, serial: str, why: str) -> None:
        b = self.bound[serial]
        if b.state == "active":
            b.state, b.reason, b.current = "retired", why, False

    def attest(self, cert: Cert, device: str) -> V:
        """The expected answer, applying its effects (the order of checks of AttestationService._judge)."""
        if not cert.trusted:
            return V.CERTIFICATE_NOT_ELIGIBLE
        b = self.bound.get(cert.serial)
        retired = b is not None and b.state == "retired"
        gone = V.CERTIFICATE_REVOKED if cert.status == "revoked" else V.CERTIFICATE_RETIRED
        if b is not None and b.device != device:
            return gone if retired else V.BOUND_TO_OTHER_DEVICE
        status = self.status[device]
        if status != "active":
            return {"deleted": V.DEVICE_DELETED, "deactivated": V.DEVICE_DEACTIVATED,
                    "suspended": V.DEVICE_SUSPENDED}[status]
        if retired:
            return gone
        if cert.status == "revoked":
            return V.CERTIFICATE_REVOKED
        if cert.status == "hold":
            return V.CERTIFICATE_ON_HOLD
        if b is None:
            ancestors, owner = [], None
            parent = cert.renewal_of
            while parent is not None:
                ancestors.append(parent.serial)
                if owner is None and parent.serial in self.bound:
                    owner = self.bound[parent.serial].device
                parent = parent.renewal_of
            current = self.current(device)
            if cert.enrolled not in (None, device) or owner not in (None, device):
                return V.CERTIFICATE_OF_OTHER_DEVICE
            if current is not None and cert.enrolled != device and current not in ancestors:
                return V.DEVICE_BOUND_TO_OTHER_CERTIFICATE
            if current is not None:
                self.retire(current, "superseded")
            self.bound[cert.serial] = Bound(device)
        return V.MANAGED


START = NOW + timedelta(minutes=30)  # the clocks of the services under test stand still here


_serials = iter(range(0x7000000, 0x8000000))


def machine(ca, db_url: str, sqlite_template):
    class Binding(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.loop = asyncio.new_event_loop()
            url = db_url
            if url == "sqlite":
                path = sqlite_template.parent / f"model-{uuid.uuid4().hex}.db"
                shutil.copy(sqlite_template, path)
                url = f"sqlite+aiosqlite:///{path}"
            else:
                self.run(_truncate_pg(url))
            self.engine = create_engine(url, sqlite_synchronous="OFF")  # durability is not under test here
            self.store = DeviceStore(self.engine, clock=SettableClock(START))
            self.att = AttestationService(self.engine, cas={ca.name: ca}, external=None, clock=SettableClock(START))
            self.model = Model()
            self.certs: list[Cert] = []
            self.served: dict[str, str] = {}  # serial -> the device it was ever managed for
            self.run(self._setup())

        def run(self, coro):
            return self.loop.run_until_complete(coro)

        async def _setup(self):
            await register_ca(self.engine, ca)
            await attesting_profile(self.engine, ca.name, "trusted")
            await attesting_profile(self.engine, ca.name, "plain", device_trust=False)
            for d in DEVICES:
                await self.store.create(d, actor="model")

        def teardown(self):
            self.run(self.att.aclose())
            self.run(self.engine.dispose())
            self.loop.close()

        async def _issue(self, trusted: bool, renewal_of: Cert | None, enrolled: str | None) -> Cert:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = ca.issue(csr(key, "device"), IssuancePolicy(CertificateTemplate()), serial=next(_serials), now=NOW)
            serial = await record_issued(self.engine, ca, cert, profile="trusted" if trusted else "plain")
            async with writer(self.engine).begin() as conn:
                await conn.execute(certificates.update().where(certificates.c.serial == serial).values(
                    renewal_of=renewal_of.serial if renewal_of else None, enrolled_device_id=enrolled))
            return Cert(serial, key, cert.public_bytes(serialization.Encoding.DER), trusted, renewal_of, enrolled)

        def pick(self, i: int) -> Cert:
            return self.certs[i % len(self.certs)]

        @rule(trusted=st.booleans(), enrolled=st.sampled_from((None,) * 3 + DEVICES))
        def issue(self, trusted, enrolled):
            self.certs.append(self.run(self._issue(trusted, None, enrolled)))

        @precondition(lambda self: self.certs)
        @rule(i=st.integers(0, 50))
        def renew(self, i):
            parent = self.pick(i)
            self.certs.append(self.run(self._issue(parent.trusted, parent, parent.enrolled)))

        @precondition(lambda self: self.certs)
        @rule(i=st.integers(0, 50), device=st.sampled_from(DEVICES))
        def attest(self, i, device):
            cert = self.pick(i)
            expected = self.model.attest(cert, device)

            async def go():
                nonce = (await self.att.challenge(device))["nonce"]
                sig = base64.b64decode(sign(cert.key, nonce, device, "ecdsa-sha256"))
                return await self.att.verify(device_id=device, nonce=nonce, certificate=cert.der, signature=sig,
                                             algorithm="ecdsa-sha256")

            got = self.run(go()).reason
            assert got is expected, (got, expected, cert.serial, device)
            if got is V.MANAGED:
                assert self.served.setdefault(cert.serial, device) == device

        @rule(device=st.sampled_from(DEVICES), action=st.sampled_from(sorted(LIFECYCLE)))
        def lifecycle(self, device, action):
            sources, target = LIFECYCLE[action]
            try:
                self.run(self.store.transition(device, action, actor="model"))
            except InvalidTransition:
                assert self.model.status[device] not in sources
                return
            assert self.model.status[device] in sources
            self.model.status[device] = target
            for c in self.certs:
                b = self.model.bound.get(c.serial)
                # a device's certificates: those bound to it, and those issued for it that have not bound yet
                if (b is None and c.enrolled != device) or (b is not None and b.device != device):
                    continue
                state = b.state if b is not None else "active"
                if target == "deactivated" and state == "active" and c.status == "valid":
                    c.status = "hold"
                elif target == "active" and state == "active" and c.status == "hold":
                    c.status = "valid"
                elif target == "deleted":
                    if b is not None:
                        self.model.retire(c.serial, "device_deleted")
                    c.status = "revoked"

        @rule(device=st.sampled_from(DEVICES))
        def remove_cert(self, device):
            current = self.model.current(device)
            try:
                self.run(self.store.remove_certificate(device, actor="model"))
            except InvalidTransition:
                assert current is None
                return
            assert current is not None
            self.model.retire(current, "removed")
            next(c for c in self.certs if c.serial == current).status = "revoked"

        @precondition(lambda self: self.certs)
        @rule(i=st.integers(0, 50), hold=st.booleans())
        def revoke(self, i, hold):
            cert = self.pick(i)
            if cert.status == "revoked":
                return

            async def go():
                async with writer(self.engine).begin() as conn:
                    if hold and cert.status == "valid":
                        await change_status(conn, cert.serial, CertStatus.HOLD, at=START, actor="test:model")
                    elif not hold:
                        await change_status(conn, cert.serial, CertStatus.REVOKED, at=START, actor="test:model",
                                            reason=Reason.KEY_COMPROMISE)

            self.run(go())
            if hold and cert.status == "valid":
                cert.status = "hold"
            elif not hold:
                cert.status = "revoked"

        @invariant()
        def store_matches_model(self):
            async def read():
                async with self.engine.connect() as conn:
                    rows = (await conn.execute(sa.select(device_certs))).all()
                    statuses = dict((await conn.execute(sa.select(certificates.c.serial, certificates.c.status))).all())
                return rows, statuses

            rows, statuses = self.run(read())
            got = {r.serial: Bound(r.device_id, bool(r.current), r.state, r.retired_reason) for r in rows}
            assert got == self.model.bound
            currents = [b.device for b in got.values() if b.current]
            assert len(currents) == len(set(currents))  # one current certificate per device
            assert {c.serial: c.status for c in self.certs} == {s: statuses[s] for s in (c.serial for c in self.certs)}

    return Binding


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_binding_rules_hold_in_random_sequences(request, ca, sqlite_template, db):
    url = "sqlite" if db == "sqlite" else request.getfixturevalue("pg_url")
    examples = 12 if db == "sqlite" else 5
    run_state_machine_as_test(machine(ca, url, sqlite_template), settings=settings(
        max_examples=examples, stateful_step_count=20, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck)))
