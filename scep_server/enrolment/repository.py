"""What enrolment stores and reads, as one protocol: the SQL implementations (scep_server.enrolment.sql) keep
the fast paths of the enrolment hot path; the in-memory one (scep_server.enrolment.memory) lets the
enrolment rules run without a database.

Rows are plain dicts shaped like the ``certificates`` and ``scep_transactions`` tables; an audit event is the
keyword arguments of store.events.record_event (at, kind, subject, actor, data).

Certificate status is written by enrolment in exactly three places, all here: ``record_guarded`` and
``approve`` (a renewal's signer revoked as superseded, in the transaction that records its successor),
``confirm_ack`` (the same, once a delegated renewal was acknowledged) and ``withdraw`` (a certificate revoked
because it must not be handed out).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..ca.inventory import CertRecord


class Duplicate(Exception):
    """A row with the same key exists (the transaction, or the certificate's serial): nothing was written."""


class SignerChanged(Exception):
    """The renewal's signing certificate left ``valid`` (a hold, a revocation) while the renewal was in flight."""


class NotPending(Exception):
    """The transaction is no longer in the state the write expected (decided, or reconciled, meanwhile)."""


class DeviceTakenDown(Exception):
    """The device the certificate is issued for was deleted, deactivated or suspended while it was issued (by
    another request, process or instance): nothing was written."""

    def __init__(self, device_id: str, status: str):
        self.device_id, self.status = device_id, status
        super().__init__(f"device {device_id} is deleted: its id is never enrolled again" if status == "deleted"
                         else f"device {device_id} is {status}: it enrols again once it is active")


@dataclass(frozen=True)
class Binding:
    """The device binding of a renewal's signing certificate."""

    state: str  # of the certificate's binding: active, retired
    device_id: str
    device_status: str  # of the device


@dataclass(frozen=True)
class SignerStanding:
    """What the renewal rules read about a signing certificate."""

    record: CertRecord
    successor: str | None  # the serial of a renewal of it that is not revoked
    binding: Binding | None


def with_bound_device(record: CertRecord, binding: Binding | None) -> CertRecord:
    """A signing certificate bound to a device at attestation, though not enrolled for one: its renewal is for that
    device (it follows the device's lifecycle from its issue, and never binds elsewhere)."""
    if record.enrolled_device_id is None and binding is not None and binding.state == "active":
        return dataclasses.replace(record, enrolled_device_id=binding.device_id)
    return record


def signer_renewed(successor: str) -> SignerChanged:
    return SignerChanged(f"the signing certificate is already renewed (as {successor}): the renewal was not issued")


def signer_changed(status: str | None) -> SignerChanged:
    status = status or "unknown"
    return SignerChanged(f"the signing certificate is {'on hold' if status == 'hold' else status}: "
                         "the renewal was not issued")


# refused renewal requests remembered per signing certificate (an attacker makes them only for certificates it holds)
RENEWAL_REFUSALS_PER_SIGNER = 64


class EnrolmentRepository(Protocol):
    """The storage of the enrolment path."""

    # True: find_sync, lookup_sync and record_sync exist and may be called from the service's worker threads
    inline: bool

    async def prepare(self) -> None:
        """Called before each request; sets up what the first request needs."""

    async def find(self, profile: str, key: str) -> dict | None:
        """The transaction row, or None."""

    async def record(self, cert_row: dict, tx_row: dict, event: dict) -> None:
        """Certificate, transaction and audit event, all or nothing; Duplicate when the transaction or serial exists,
        DeviceTakenDown when the device it is for (``enrolled_device_id``) is registered and no longer active.
        Every write of a certificate checks its device in its own transaction, so that a device change and an
        issue at the same moment end as if one came after the other (the change holds or revokes the certificate,
        or the issue is refused)."""

    async def record_guarded(self, cert_row: dict, tx_row: dict, event: dict, *, renewal_of: str | None,
                             now: datetime, supersede: bool) -> None:
        """``record``, and for a renewal only while its signer is ``valid`` (revoked as superseded when
        ``supersede``; otherwise renewed by no certificate that is not revoked), in the same transaction:
        SignerChanged otherwise, with nothing written."""

    async def insert_transaction(self, tx_row: dict) -> dict | None:
        """Insert a transaction row (a pending enrolment); on a concurrent duplicate return the existing row."""

    async def certificate(self, serial: str) -> CertRecord | None: ...

    async def signer_standing(self, fingerprint_sha256: str) -> SignerStanding | None:
        """The certificate with this DER fingerprint, its live successor and its device binding."""

    async def valid_serials_for_key(self, profile: str, public_key_sha256: str, now: datetime) -> list[str]:
        """Up to ten serials of unexpired ``valid`` certificates of the profile for this key."""

    async def key_enrolled(self, profile: str, public_key_sha256: str) -> bool:
        """Whether the profile has a transaction (any state) or a certificate (any status) for this key."""

    async def compromised_key(self, public_key_sha256: str) -> str | None:
        """The serial of a certificate for this key revoked for keyCompromise (any CA, any profile), or None."""

    async def find_with_compromised(self, profile: str, key: str,
                                    public_key_sha256: str) -> tuple[dict | None, str | None]:
        """``find`` and ``compromised_key`` together (one round trip where the store allows it)."""

    async def record_event(self, event: dict) -> None: ...

    async def renewal_refused_before(self, signer_serial: str, request_sha256: str) -> bool:
        """Whether this request (by the SHA-256 of its signed attributes) signed by this certificate was refused."""

    async def remember_refused_renewal(self, signer_serial: str, request_sha256: str, *, signer_not_after: datetime,
                                       now: datetime) -> None:
        """Remember a refused request signed by one of our certificates; keeps the newest
        RENEWAL_REFUSALS_PER_SIGNER of the signer and forgets those of every signer expired by ``now``."""

    async def approve(self, profile: str, key: str, cert_row: dict, event: dict, *, renewal_of: str | None,
                      now: datetime, supersede: bool, actor: str) -> None:
        """A pending transaction becomes ``issued`` with its certificate (renewal: guarded as in
        ``record_guarded``). NotPending or SignerChanged with nothing written."""

    async def reject_pending(self, profile: str, key: str, fail_text: str, event: dict, *, actor: str,
                             now: datetime) -> None:
        """A pending transaction becomes ``rejected``; NotPending with nothing written."""

    async def pending_profiles(self) -> list[str]:
        """The profiles that have pending transactions."""

    async def pending_before(self, profile: str, created_before: datetime, *, limit: int) -> list[dict]:
        """The pending transactions of the profile received at or before ``created_before`` (transaction_id,
        created_at), oldest first, at most ``limit``."""

    async def withdraw(self, serial: str, profile: str, key: str, why: str, event: dict, *, now: datetime) -> None:
        """Revoke the certificate (cessationOfOperation) and mark its transaction rejected."""

    async def confirm_ack(self, profile: str, key: str, *, renewal_of: str | None, now: datetime,
                          supersede: bool) -> None:
        """``awaiting_ack`` -> ``issued``, a renewal's signer still ``valid`` (superseded when ``supersede``) in the
        same transaction. NotPending when the transaction no longer awaits it, SignerChanged when the signer left
        ``valid``: nothing is written."""

    async def awaiting_ack(self, updated_before: datetime) -> list[dict]:
        """Transactions ``awaiting_ack`` untouched since ``updated_before``, with their certificate's der, ca,
        raw transaction id (raw_txid) and renewal_of (at most 1000)."""

    async def claim(self, row: dict, now: datetime) -> bool:
        """Compare-and-set on an ``awaiting_ack`` row read by ``awaiting_ack``: True when this caller took it."""


class InlineRepository(EnrolmentRepository, Protocol):
    """A repository whose lookups and writes run in the calling thread (``inline`` is True)."""

    def find_sync(self, profile: str, key: str) -> dict | None: ...

    def lookup_sync(self, profile: str, key: str, *, static_secrets: bool = False) -> tuple[dict | None, object]:
        """``find_sync``'s row and, with ``static_secrets``, the static profile's secrets as stored now
        (StaticSecrets; None: no static profile of that name; model.NOT_LOOKED_UP without)."""

    def compromised_sync(self, public_key_sha256: str) -> str | None:
        """``compromised_key``, on the calling thread's connection."""

    def record_sync(self, cert_row: dict, tx_row: dict, event: dict) -> None: ...
