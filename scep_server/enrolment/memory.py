"""The enrolment repository in memory: the enrolment rules without a database (tests, tools).

Certificates, transactions, bindings and events live in dicts and lists; every operation keeps the SQL
repository's guarantees (a write is all or nothing, duplicates are refused, compare-and-set states)."""
from __future__ import annotations

import copy
import json
from datetime import datetime

from ..ca.inventory import CertRecord, Reason
from ..scep.message import without_challenge_password
from .repository import (RENEWAL_REFUSALS_PER_SIGNER, Binding, Duplicate, NotPending, SignerStanding, signer_changed,
                         signer_renewed)

_RECORD_FIELDS = [f for f in CertRecord.__dataclass_fields__]


class InMemoryRepository:
    inline = False

    def __init__(self) -> None:
        self.certificates: dict[str, dict] = {}  # serial -> row
        self.transactions: dict[tuple[str, str], dict] = {}  # (profile, transaction id) -> row
        self.bindings: dict[str, Binding] = {}  # serial -> the device binding of that certificate
        self.events: list[dict] = []
        # signer serial -> {request sha256: (refused at, signer not after)}
        self.renewal_refusals: dict[str, dict[str, tuple[datetime, datetime]]] = {}

    # ------------------------------------------------------------------ reading

    async def prepare(self) -> None:
        return None

    async def find(self, profile: str, key: str) -> dict | None:
        row = self.transactions.get((profile, key))
        return dict(row) if row is not None else None

    async def certificate(self, serial: str) -> CertRecord | None:
        row = self.certificates.get(serial)
        return self._as_record(row) if row is not None else None

    async def signer_standing(self, fingerprint_sha256: str) -> SignerStanding | None:
        row = next((r for r in self.certificates.values() if r["fingerprint_sha256"] == fingerprint_sha256), None)
        if row is None:
            return None
        successor = next((r["serial"] for r in self.certificates.values()
                          if r.get("renewal_of") == row["serial"] and r["status"] != "revoked"), None)
        return SignerStanding(record=self._as_record(row), successor=successor,
                              binding=self.bindings.get(row["serial"]))

    async def valid_serials_for_key(self, profile: str, public_key_sha256: str, now: datetime) -> list[str]:
        return [r["serial"] for r in self.certificates.values()
                if r["profile"] == profile and r["public_key_sha256"] == public_key_sha256
                and r["status"] == "valid" and r["not_after"] > now][:10]

    async def key_enrolled(self, profile: str, public_key_sha256: str) -> bool:
        return any(r["profile"] == profile and r["public_key_sha256"] == public_key_sha256
                   for rows in (self.transactions.values(), self.certificates.values()) for r in rows)

    async def compromised_key(self, public_key_sha256: str) -> str | None:
        return next((r["serial"] for r in self.certificates.values()
                     if r["public_key_sha256"] == public_key_sha256 and r["status"] == "revoked"
                     and r["revocation_reason"] == int(Reason.KEY_COMPROMISE)), None)

    async def find_with_compromised(self, profile: str, key: str,
                                    public_key_sha256: str) -> tuple[dict | None, str | None]:
        return await self.find(profile, key), await self.compromised_key(public_key_sha256)

    async def awaiting_ack(self, updated_before: datetime) -> list[dict]:
        out = []
        for row in self.transactions.values():
            if row["state"] == "awaiting_ack" and row["updated_at"] <= updated_before:
                cert = self.certificates[row["serial"]]
                out.append({**{k: row[k] for k in ("profile", "transaction_id", "serial", "csr_der", "updated_at")},
                            "der": cert["der"], "ca": cert["ca"], "raw_txid": cert["transaction_id"],
                            "renewal_of": cert.get("renewal_of")})
        return out[:1000]

    async def pending_profiles(self) -> list[str]:
        return sorted({row["profile"] for row in self.transactions.values() if row["state"] == "pending"})

    async def pending_before(self, profile: str, created_before: datetime, *, limit: int) -> list[dict]:
        rows = sorted((row["created_at"], row["transaction_id"]) for row in self.transactions.values()
                      if row["state"] == "pending" and row["profile"] == profile
                      and row["created_at"] <= created_before)
        return [{"transaction_id": key, "created_at": at} for at, key in rows[:limit]]

    # ------------------------------------------------------------------ writing

    async def record(self, cert_row: dict, tx_row: dict, event: dict) -> None:
        await self.record_guarded(cert_row, tx_row, event, renewal_of=None, now=cert_row["issued_at"],
                                  supersede=False)

    async def record_guarded(self, cert_row: dict, tx_row: dict, event: dict, *, renewal_of: str | None,
                             now: datetime, supersede: bool) -> None:
        if cert_row["serial"] in self.certificates or (tx_row["profile"], tx_row["transaction_id"]) in self.transactions:
            raise Duplicate(cert_row["serial"])
        if renewal_of is not None:
            self._guard_signer(renewal_of, now, supersede=supersede)
        self._insert_certificate(cert_row)
        self.transactions[(tx_row["profile"], tx_row["transaction_id"])] = dict(tx_row)
        self._event(event)

    async def insert_transaction(self, tx_row: dict) -> dict | None:
        key = (tx_row["profile"], tx_row["transaction_id"])
        if key in self.transactions:
            return dict(self.transactions[key])
        self.transactions[key] = {"serial": None, "fail_text": None, "decided_by": None, "renewal_of": None,
                                  "device_id": None, "signer_key_sha256": None, **tx_row}
        return None

    async def renewal_refused_before(self, signer_serial: str, request_sha256: str) -> bool:
        return request_sha256 in self.renewal_refusals.get(signer_serial, {})

    async def remember_refused_renewal(self, signer_serial: str, request_sha256: str, *, signer_not_after: datetime,
                                       now: datetime) -> None:
        for serial in [s for s, rows in self.renewal_refusals.items()
                       if any(not_after <= now for _, not_after in rows.values())]:
            rows = {k: v for k, v in self.renewal_refusals[serial].items() if v[1] > now}
            if rows:
                self.renewal_refusals[serial] = rows
            else:
                del self.renewal_refusals[serial]
        rows = self.renewal_refusals.setdefault(signer_serial, {})
        if request_sha256 in rows:
            return
        others = sorted(rows, key=lambda k: (rows[k][0], k), reverse=True)
        for old in others[RENEWAL_REFUSALS_PER_SIGNER - 1:]:  # the newest others, and this one
            del rows[old]
        rows[request_sha256] = (now, signer_not_after)

    async def record_event(self, event: dict) -> None:
        self._event(event)

    async def approve(self, profile: str, key: str, cert_row: dict, event: dict, *, renewal_of: str | None,
                      now: datetime, supersede: bool, actor: str) -> None:
        tx = self._in_state(profile, key, "pending")
        if cert_row["serial"] in self.certificates:
            raise Duplicate(cert_row["serial"])
        if renewal_of is not None:
            self._guard_signer(renewal_of, now, supersede=supersede)
        self._insert_certificate(cert_row)
        tx.update(state="issued", serial=cert_row["serial"], decided_by=actor, updated_at=now,
                  csr_der=without_challenge_password(tx["csr_der"]))
        self._event(event)

    async def reject_pending(self, profile: str, key: str, fail_text: str, event: dict, *, actor: str,
                             now: datetime) -> None:
        tx = self._in_state(profile, key, "pending")
        tx.update(state="rejected", fail_text=fail_text, decided_by=actor, updated_at=now,
                  csr_der=without_challenge_password(tx["csr_der"]))
        self._event(event)

    async def withdraw(self, serial: str, profile: str, key: str, why: str, event: dict, *, now: datetime) -> None:
        cert = self.certificates[serial]
        if cert["status"] != "revoked":
            cert.update(status="revoked", revocation_reason=int(Reason.CESSATION_OF_OPERATION), revoked_at=now,
                        updated_at=now)
        tx = self.transactions.get((profile, key))
        if tx is not None:
            tx.update(state="rejected", fail_text=why, updated_at=now,
                      csr_der=without_challenge_password(tx["csr_der"]))
        self._event(event)

    async def confirm_ack(self, profile: str, key: str, *, renewal_of: str | None, now: datetime,
                          supersede: bool) -> None:
        tx = self._in_state(profile, key, "awaiting_ack")
        if renewal_of is not None:
            self._guard_signer(renewal_of, now, supersede=supersede, renewing=False)
        tx.update(state="issued", updated_at=now, csr_der=without_challenge_password(tx["csr_der"]))

    async def claim(self, row: dict, now: datetime) -> bool:
        tx = self.transactions.get((row["profile"], row["transaction_id"]))
        if tx is None or tx["state"] != "awaiting_ack" or tx["updated_at"] != row["updated_at"]:
            return False
        tx["updated_at"] = now
        return True

    # ------------------------------------------------------------------ helpers

    def _in_state(self, profile: str, key: str, state: str) -> dict:
        tx = self.transactions.get((profile, key))
        if tx is None or tx["state"] != state:
            raise NotPending(key)
        return tx

    def _guard_signer(self, serial: str, now: datetime, *, supersede: bool, renewing: bool = True) -> None:
        cert = self.certificates.get(serial)
        if cert is None or cert["status"] != "valid":
            raise signer_changed(cert["status"] if cert is not None else None)
        if renewing and not supersede:
            successor = next((s for s, row in self.certificates.items()
                              if row.get("renewal_of") == serial and row["status"] != "revoked"), None)
            if successor is not None:
                raise signer_renewed(successor)
        cert["updated_at"] = now
        if supersede:
            cert.update(status="revoked", revocation_reason=int(Reason.SUPERSEDED), revoked_at=now)

    def _insert_certificate(self, cert_row: dict) -> None:
        row = {"revocation_reason": None, "revoked_at": None, "invalidity_date": None, "first_used_at": None,
               "renewal_of": None, "unused_since": None, "enrolled_device_id": None, **copy.copy(cert_row)}
        self.certificates[row["serial"]] = row

    def _event(self, event: dict) -> None:
        self.events.append({**event, "data": json.loads(json.dumps(event.get("data") or {}, default=str))})

    @staticmethod
    def _as_record(row: dict) -> CertRecord:
        fields = {k: row.get(k) for k in _RECORD_FIELDS}
        fields["sans"] = json.loads(row["sans"]) if isinstance(row["sans"], str) else list(row["sans"])
        return CertRecord(**fields)
