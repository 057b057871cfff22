"""Certificates left ``awaiting_ack`` (a crash, a lost connection during a delegated enrolment): notify the
MDM again and deliver, or revoke (cessationOfOperation)."""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from cryptography import x509

from ..profiles import UnknownProfile
from .model import ACK_STALE_AFTER, EnrollmentRequest, StoredTransaction, challenge_password
from .repository import SignerChanged

if TYPE_CHECKING:
    from .service import ScepService

log = structlog.get_logger("scep")


class AckReconciler:
    def __init__(self, service: ScepService):
        self.service = service

    async def run(self, *, older_than: timedelta = ACK_STALE_AFTER) -> dict[str, str]:
        """Only rows untouched for ``older_than`` are taken (another instance may be notifying right now); each is
        claimed by a compare-and-set first. Returns {serial: outcome}."""
        repo = self.service.repository
        now = self.service.clock()
        done: dict[str, str] = {}
        for row in await repo.awaiting_ack(now - older_than):
            if await repo.claim(row, now):
                done[row["serial"]] = await self._reconcile_one(row)
        return done

    async def _reconcile_one(self, row: dict) -> str:
        svc = self.service
        serial, key, profile_name = row["serial"], row["transaction_id"], row["profile"]
        why = None
        try:
            profile = await svc.profiles.get(profile_name)
        except UnknownProfile:
            profile, why = None, f"profile {profile_name!r} no longer exists"
        ca = svc.cas[row["ca"]]
        verifier = svc.verifiers.get(profile.challenge_kind) if profile is not None else None
        if why is None and verifier is None:
            why = f"challenge kind {profile.challenge_kind!r} is not available on this server"
        if why is None:
            renewal_of = await svc.repository.certificate(row["renewal_of"]) if row["renewal_of"] else None
            csr = x509.load_der_x509_csr(row["csr_der"])
            req = EnrollmentRequest(profile=profile, message=StoredTransaction(row["raw_txid"] or key),
                                    csr=csr, csr_der=row["csr_der"], challenge=challenge_password(csr),
                                    renewal_of=renewal_of)
            try:
                await verifier.after_issue(req, x509.load_der_x509_certificate(row["der"]))
            except Exception as exc:  # noqa: BLE001 - any failure to get the acknowledgement revokes
                why = str(exc) or type(exc).__name__
        outcome = "delivered"
        if why is None:
            try:
                if not await svc.confirm_ack(profile, ca, key, row["renewal_of"]):
                    return "decided elsewhere"
            except SignerChanged as exc:
                why = str(exc)
        if why is not None:
            outcome = "revoked"
            await svc.withdraw(ca, serial, profile_name, key, f"not acknowledged by the MDM: {why}")
        await svc.repository.record_event(dict(
            at=svc.clock(), kind="scep.enrolment.reconcile", subject=serial, actor="system:start-up",
            data={"profile": profile_name, "outcome": outcome, "detail": why}))
        log.info("scep.enrolment.reconcile", profile=profile_name, serial=serial, outcome=outcome, detail=why)
        return outcome
