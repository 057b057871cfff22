"""The approval workflow: an administrator approves (issues now) or rejects a pending enrolment; the device
learns the decision at its next CertPoll."""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustkit.problems import Conflict

from ..ca import inventory
from ..ca.authority import random_serial
from ..ca.policy import PolicyViolation
from .identity import NoDeviceId, device_id_of
from .model import ApprovalRefused, bounded, expired_text, pending_expired, unused_since
from .repository import DeviceTakenDown, NotPending, SignerChanged, with_bound_device

if TYPE_CHECKING:
    from .service import ScepService


def decided_concurrently(transaction_id: str) -> Exception:
    """The error of a decision that lost to another one (the transaction left ``pending`` meanwhile): 409."""
    return Conflict(f"enrolment {bounded(transaction_id)!r} was decided concurrently")


class ApprovalWorkflow:
    def __init__(self, service: ScepService):
        self.service = service

    async def decide(self, profile_name: str, transaction_id: str, *, approve: bool, actor: str,
                     reason: str | None = None) -> str:
        """Approve (issue now; returns the serial) or reject (returns "rejected") a pending enrolment."""
        svc = self.service
        repo = svc.repository
        profile = await svc.profiles.get(profile_name)
        ca = await svc.ca_of(profile)
        now = svc.clock()
        m = await repo.find(profile_name, transaction_id)
        if m is None or m["state"] != "pending":
            raise LookupError(f"no pending enrolment {bounded(transaction_id)!r} on profile {profile_name!r}")
        if pending_expired(profile.settings, m["created_at"], now):
            # nobody decided it in time (profile pending_expiry_days): rejected as expired, never approved; a
            # rejection asked for finds it rejected
            if not await svc.expiry.expire(profile, transaction_id, m["created_at"], now=now):
                raise decided_concurrently(transaction_id)
            if not approve:
                return "rejected"
            raise ApprovalRefused(expired_text(profile.settings))
        if not approve:
            await self.reject(profile_name, transaction_id, reason or "rejected by an administrator", actor=actor,
                              now=now, reason=reason)
            return "rejected"
        refusal = svc.cannot_issue(ca, now)
        if refusal:  # the enrolment stays pending: approved once server.base_url is set or a new CA is active
            raise Conflict(refusal)
        compromised = await repo.compromised_key(m["public_key_sha256"])
        if compromised is not None:  # revoked as compromised while the enrolment waited (enrolment.checks)
            text = (f"the public key is compromised: certificate {compromised} for it was revoked for keyCompromise "
                    f"while the enrolment waited")
            await self.reject(profile_name, transaction_id, text, actor=actor, now=now, reason=text)
            raise ApprovalRefused(text)
        csr = x509.load_der_x509_csr(m["csr_der"])
        renewal_of = None
        if m.get("renewal_of"):
            renewal_of = await repo.certificate(m["renewal_of"])
            if renewal_of is None:
                raise LookupError(f"the certificate renewed by enrolment {bounded(transaction_id)!r} no longer exists")
            why, binding = await self._signer_left(renewal_of, now)
            renewal_of = with_bound_device(renewal_of, binding)
            if why is not None:  # it will not come back: the renewal is rejected, as the device learns at its poll
                text = f"the signing certificate {why} while the renewal waited"
                await self.reject(profile_name, transaction_id, text, actor=actor, now=now, reason=text)
                raise ApprovalRefused(text)
        supersede = renewal_of is not None and profile.settings.supersede_on_renewal
        try:
            # the whole template, as it is now: key, signature algorithm, names, weak key (it may have changed)
            vetted = await svc._run(profile.policy.check, csr, reserved_names=svc.reserved_names())
            cert = await svc._run(ca.issue, csr, profile.policy, serial=random_serial(), now=now,
                                  ocsp=svc.ocsp_aia and profile.settings.ocsp_aia, vetted=vetted)
        except PolicyViolation as exc:  # the template changed while the enrolment waited
            text = f"the profile's certificate template refuses this request: {exc}"
            await self.reject(profile_name, transaction_id, text, actor=actor, now=now, reason=text)
            raise ApprovalRefused(text) from None
        der = cert.public_bytes(serialization.Encoding.DER)
        serial = inventory.serial_hex(cert.serial_number)
        if renewal_of is not None:
            device_id = renewal_of.enrolled_device_id
        elif m.get("device_id"):  # named by the challenge that authorised the request (a one-time challenge's)
            device_id = m["device_id"]
        else:
            device_id = (await svc.device_identity(profile_name, transaction_id)
                         if svc.device_identity and profile.settings.device_trust else None)
            if device_id is None and profile.settings.device_id is not None:
                device_id = await self._named_device(profile, csr, transaction_id, actor=actor, now=now)
        if renewal_of is None and device_id is not None:
            await self._device_active(profile_name, transaction_id, device_id, actor=actor, now=now)
        cert_row = inventory.certificate_row(cert, der, ca.name, profile_name, transaction_id, m["public_key_sha256"],
                                             now, crl_partition=ca.partition_of(cert.serial_number))
        cert_row["enrolled_device_id"] = device_id
        if renewal_of is not None:
            cert_row.update(renewal_of=renewal_of.serial, unused_since=unused_since(renewal_of, now))
        event = dict(at=now, kind="pki.cert.renew" if renewal_of else "pki.cert.issue", subject=serial, actor=actor,
                     data={"transaction_id": transaction_id, "approved": True,
                           "renewal_of": renewal_of.serial if renewal_of else None,
                           **({"reason": reason} if reason else {})})
        try:
            await repo.approve(profile_name, transaction_id, cert_row, event,
                               renewal_of=renewal_of.serial if renewal_of else None, now=now, supersede=supersede,
                               actor=actor)
        except SignerChanged as exc:
            raise LookupError(f"enrolment {bounded(transaction_id)!r} cannot be approved: {exc}") from None
        except NotPending:
            raise decided_concurrently(transaction_id) from None
        except DeviceTakenDown as exc:  # taken down since _device_active read it
            if exc.status == "deleted":
                await self.reject(profile_name, transaction_id, str(exc), actor=actor, now=now, reason=str(exc))
                raise ApprovalRefused(str(exc)) from None
            raise Conflict(f"device {exc.device_id} is {exc.status}: the enrolment can be approved once it is "
                           "active") from None
        if supersede:
            svc.on_status_change(ca.name)
        return serial

    async def _signer_left(self, signer, now: datetime) -> tuple[str | None, object]:
        """Why a pending renewal's signer no longer renews (the renewal rules a RenewalReq is judged by, that time
        can change: expiry, its binding and device), or None; and its binding. Its status is checked where the
        renewal is written."""
        standing = await self.service.repository.signer_standing(hashlib.sha256(signer.der).hexdigest())
        binding = standing.binding if standing is not None else None
        if not signer.not_before <= now < signer.not_after:
            return "has expired", binding
        if binding is not None and binding.state != "active":
            return f"was retired from its binding to device {binding.device_id}", binding
        if binding is not None and binding.device_status != "active":
            return f"is bound to device {binding.device_id}, which became {binding.device_status}", binding
        return None, binding

    async def _device_active(self, profile_name: str, transaction_id: str, device_id: str, *, actor: str,
                             now: datetime) -> None:
        """The device a new enrolment is for was taken down while it waited: deleted, the enrolment is rejected;
        deactivated or suspended, it stays pending (approved once the device is active again)."""
        svc = self.service
        status = await svc.ensure_device(device_id, actor, register=False) if svc.ensure_device else None
        if status == "deleted":
            text = f"device {device_id} is deleted: its id is never enrolled again"
            await self.reject(profile_name, transaction_id, text, actor=actor, now=now, reason=text)
            raise ApprovalRefused(text)
        if status is not None and status != "active":
            raise Conflict(f"device {device_id} is {status}: the enrolment can be approved once it is active")

    async def _named_device(self, profile, csr, transaction_id: str, *, actor: str, now: datetime) -> str:
        """The device a pending request names (profile `device_id`), registered if new; a request that names none
        (the setting was added while it waited) or names a deleted device is rejected."""
        svc = self.service
        try:
            device_id = device_id_of(csr, profile.settings.device_id)
        except NoDeviceId as exc:
            text = f"the profile's device id setting refuses this request: {exc}"
            await self.reject(profile.name, transaction_id, text, actor=actor, now=now, reason=text)
            raise ApprovalRefused(text) from None
        if svc.ensure_device is not None and await svc.ensure_device(device_id, actor) == "deleted":
            text = f"device {device_id} is deleted: its id is never enrolled again"
            await self.reject(profile.name, transaction_id, text, actor=actor, now=now, reason=text)
            raise ApprovalRefused(text)
        return device_id

    async def reject(self, profile_name: str, transaction_id: str, fail_text: str, *, actor: str, now: datetime,
                     reason: str | None) -> None:
        """Mark a pending enrolment rejected, with its audit event."""
        try:
            await self.service.repository.reject_pending(
                profile_name, transaction_id, fail_text, dict(
                    at=now, kind="scep.enrolment.reject", subject=transaction_id, actor=actor,
                    data={"profile": profile_name, "reason": reason}), actor=actor, now=now)
        except NotPending:
            raise decided_concurrently(transaction_id) from None
