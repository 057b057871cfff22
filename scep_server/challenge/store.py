"""One-time challenges: random, stored as SHA-256, bound to a profile, expiring, redeemed once.

Redemption is a single compare-and-set UPDATE (unused, unexpired, this profile), so two enrolments
racing for one challenge can never both win, on SQLite or PostgreSQL, in one process or many. The
challenge keeps the transactionID and the public key that used it: a retry of that same transaction with
that same key (the same request sent again, to another process or instance while the first copy is being
issued, or after the process that redeemed it died before recording anything) is let through again, since an
enrolment is idempotent by its transaction and issues at most one certificate for it; another key under that
transactionID is refused as any other use is.
Concurrent issuances (and redemptions) share one write transaction (group commit), so a burst of
requests costs one disk flush rather than one each.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import metrics
from ..enrolment import ChallengeRejected
from trustkit.db import writer
from ..store.tables import profiles
from .tables import challenges

if TYPE_CHECKING:
    from ..ca.policy import Vetted

# 20 random bytes = 160 bits, written as 40 upper-case hex digits (safe in a PrintableString and for scrapers)
CHALLENGE_BYTES = 20


class CacheFull(Exception):
    """The profile already has its maximum of unused challenges (NDES: "The password cache is full.")."""


@dataclass(frozen=True)
class Expectations:
    """What the CSR redeeming a challenge must carry (None: not checked)."""

    subject: str | None = None
    sans: list[str] | None = None
    # the device the certificate is for: written as its enrolled_device_id (binding evidence)
    device_id: str | None = None

    def to_json(self) -> str | None:
        data = {k: v for k, v in (("subject", self.subject), ("sans", self.sans), ("device_id", self.device_id))
                if v is not None}
        return json.dumps(data, sort_keys=True) if data else None

    @classmethod
    def from_json(cls, text: str | None) -> "Expectations":
        data = json.loads(text) if text else {}
        return cls(subject=data.get("subject"), sans=data.get("sans"), device_id=data.get("device_id"))


@dataclass(frozen=True)
class IssuedChallenge:
    challenge: str = field(repr=False)
    profile: str
    expires_at: datetime


@dataclass(frozen=True)
class Redeemed:
    profile: str
    source: str
    payload_identifier: str | None
    expectations: Expectations


def digest(challenge: str) -> str:
    return hashlib.sha256(challenge.strip().encode("utf-8")).hexdigest()


def new_challenge() -> str:
    return secrets.token_hex(CHALLENGE_BYTES).upper()


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


class GroupCommit:
    """Collects concurrent operations and writes them in one transaction (one fsync for many).

    A flusher task takes whatever is queued (up to ``batch_max``), runs ``write(conn, items)`` in one write
    transaction and resolves each item's future after the commit; operations queued meanwhile form the next
    batch. A lone caller waits for nothing: its batch holds one item.
    """

    def __init__(self, engine: AsyncEngine, write, *, batch_max: int = 256, name: str = "challenge"):
        self.engine = engine
        self.name = name
        self._write = write
        self._batch_max = batch_max
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def submit(self, item: Any):
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._batch_max], self._queue[self._batch_max:]
            try:
                started = time.perf_counter()
                async with writer(self.engine).begin() as conn:
                    results = await self._write(conn, [item for item, _ in batch])
                metrics.group_commit(self.name, len(batch), time.perf_counter() - started)
            except BaseException as exc:  # noqa: BLE001 - every waiter must learn the outcome
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)


@dataclass
class _NewRow:
    values: dict[str, Any]
    max_unused: int | None


@dataclass
class _Use:
    h: str
    profile: str
    now: datetime
    transaction_id: str
    public_key_sha256: str | None


def _same_request(used_by: tuple[str | None, str | None] | None, transaction_id: str, key: str | None) -> bool:
    """A used challenge's transactionID and public key are this request's (the transactionID stored whole: at
    most 255 characters). A use recorded without a key (before the key was kept) is no one's retry."""
    if used_by is None or key is None:
        return False
    used_txid, used_key = used_by
    return used_txid is not None and used_key is not None and len(transaction_id) <= 255 and \
        used_txid == transaction_id and hmac.compare_digest(used_key, key)


class ChallengeStore:
    """Issuance and redemption go through group commits: many concurrent requests share one transaction."""

    def __init__(self, engine: AsyncEngine, *, batch_max: int = 256):
        self.engine = engine
        self._issuer = GroupCommit(engine, self._insert_batch, batch_max=batch_max, name="challenge.issue")
        self._redeemer = GroupCommit(engine, self._use_batch, batch_max=batch_max, name="challenge.redeem")

    async def close(self) -> None:
        await self._issuer.close()
        await self._redeemer.close()

    async def issue(self, profile: str, *, now: datetime, ttl: timedelta, source: str,
                    max_unused: int | None = None, requested_by: str | None = None,
                    payload_identifier: str | None = None, expectations: Expectations | None = None) -> IssuedChallenge:
        """Create one challenge for ``profile``; raises CacheFull when the cap of unused ones is reached."""
        now = _utc(now)
        challenge = new_challenge()
        expires = now + ttl
        await self._issuer.submit(_NewRow(values=dict(
            challenge_sha256=digest(challenge), profile=profile, created_at=now, expires_at=expires,
            source=source, requested_by=requested_by, payload_identifier=(payload_identifier or None),
            expectations=expectations.to_json() if expectations else None), max_unused=max_unused))
        return IssuedChallenge(challenge=challenge, profile=profile, expires_at=expires)

    @staticmethod
    async def _insert_batch(conn, items: list[_NewRow]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        capped = sorted({it.values["profile"] for it in items if it.max_unused is not None})
        unused: dict[str, int] = {}
        for profile in capped:  # in a fixed order: two instances lock profiles the same way round
            if conn.dialect.name == "postgresql":
                # serialise issuers of this profile so that the cap holds across instances
                await conn.execute(sa.select(profiles.c.name).where(profiles.c.name == profile).with_for_update())
            now = min(it.values["created_at"] for it in items if it.values["profile"] == profile)
            unused[profile] = (await conn.execute(sa.select(sa.func.count()).select_from(challenges).where(
                challenges.c.profile == profile, challenges.c.used_at.is_(None),
                challenges.c.expires_at > now))).scalar_one()
        rows = []
        for i, it in enumerate(items):
            profile = it.values["profile"]
            if it.max_unused is not None:
                if unused[profile] >= it.max_unused:
                    results[i] = CacheFull(f"profile {profile!r} already has {unused[profile]} unused challenges "
                                           f"(maximum {it.max_unused})")
                    continue
                unused[profile] += 1
            rows.append(it.values)
        if rows:
            await conn.execute(challenges.insert(), rows)
        return results

    async def redeem(self, profile: str, challenge: str | None, *, now: datetime, transaction_id: str,
                     public_key_sha256: str | None = None,
                     check: Callable[[Expectations], None] | None = None) -> Redeemed:
        """Use a challenge once for ``profile``; ChallengeRejected says why it cannot be used.

        ``check`` sees the stored expectations first and may reject the CSR without using up the challenge.
        ``public_key_sha256`` (of the CSR's SubjectPublicKeyInfo) is kept with the use: a retry of the same
        transaction with the same key may pass again (see the module's text); without it, none may.
        """
        if not challenge or not challenge.strip():
            raise ChallengeRejected("the CSR carries no challengePassword")
        now = _utc(now)
        h = digest(challenge)
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(challenges).where(challenges.c.challenge_sha256 == h))).first()
        if row is None:
            raise ChallengeRejected("unknown challenge password")
        m = row._mapping
        if m["profile"] != profile:
            raise ChallengeRejected("this challenge password was issued for another SCEP profile")
        retry = m["used_at"] is not None
        if retry and not _same_request((m["transaction_id"], m["public_key_sha256"]), transaction_id,
                                       public_key_sha256):
            raise ChallengeRejected("this challenge password has already been used")
        if _utc(m["expires_at"]) <= now:
            raise ChallengeRejected(f"this challenge password expired at {_utc(m['expires_at']).isoformat()}")
        expectations = Expectations.from_json(m["expectations"])
        if check is not None:
            check(expectations)
        if not retry and not await self._redeemer.submit(
                _Use(h=h, profile=profile, now=now, transaction_id=transaction_id[:255],
                     public_key_sha256=public_key_sha256)):
            async with self.engine.connect() as conn:  # lost to a concurrent use: by this very request?
                used_by = (await conn.execute(sa.select(challenges.c.transaction_id, challenges.c.public_key_sha256)
                                              .where(challenges.c.challenge_sha256 == h))).first()
            if not _same_request(tuple(used_by) if used_by else None, transaction_id, public_key_sha256):
                raise ChallengeRejected("this challenge password has already been used")
        return Redeemed(profile=profile, source=m["source"], payload_identifier=m["payload_identifier"],
                        expectations=expectations)

    @staticmethod
    async def _use_batch(conn, items: list[_Use]) -> list[bool]:
        """Compare-and-set the whole batch in one statement: every challenge that is still unused and unexpired
        is marked used; RETURNING tells which were. Of two uses of one challenge only the first wins."""
        now = max(it.now for it in items)
        c = challenges.c
        hashes = sorted({it.h for it in items})
        txid = sa.case({it.h: it.transaction_id for it in reversed(items)}, value=c.challenge_sha256)
        key = sa.case({it.h: it.public_key_sha256 for it in reversed(items)}, value=c.challenge_sha256)
        res = await conn.execute(challenges.update().where(
            c.challenge_sha256.in_(hashes), c.used_at.is_(None), c.expires_at > now,
        ).values(used_at=now, transaction_id=txid, public_key_sha256=key).returning(c.challenge_sha256, c.profile))
        won = {h: profile for h, profile in res.all()}
        results = []
        for it in items:
            ok = won.get(it.h) == it.profile
            if ok:
                del won[it.h]  # a second use of the same challenge in this batch loses
            results.append(ok)
        return results

    async def counts(self, profile: str, *, now: datetime) -> dict[str, int]:
        now = _utc(now)
        c = challenges.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(
                sa.case((c.used_at.is_not(None), "used"), (c.expires_at <= now, "expired"), else_="unused"),
                sa.func.count()).where(c.profile == profile).group_by(sa.text("1")))).all()
        out = {"unused": 0, "used": 0, "expired": 0}
        out.update({k: v for k, v in rows})
        return out

    async def prune(self, *, now: datetime, keep: timedelta = timedelta(days=30)) -> int:
        """Delete challenges that expired (or were used) longer than ``keep`` ago."""
        cutoff = _utc(now) - keep
        async with writer(self.engine).begin() as conn:
            res = await conn.execute(challenges.delete().where(challenges.c.expires_at < cutoff))
        return res.rowcount or 0


def expectations_from(payload: dict[str, Any] | None) -> Expectations | None:
    """Expectations from an API/CLI payload: {"subject": str, "sans": [str], "device_id": str}."""
    if not payload:
        return None
    subject = payload.get("subject")
    sans = payload.get("sans")
    device_id = payload.get("device_id")
    if device_id is not None and (not isinstance(device_id, str) or not 1 <= len(device_id) <= 64):
        raise ValueError("device_id must be a device id (1-64 characters)")
    if subject is not None and not isinstance(subject, str):
        raise ValueError("subject must be a string (RFC 4514)")
    if sans is not None and (not isinstance(sans, list) or not all(isinstance(s, str) for s in sans)):
        raise ValueError("sans must be a list of strings like dns:host.example, email:a@b, ip:10.0.0.1, uri:...")
    if subject is not None:
        from cryptography import x509

        try:
            x509.Name.from_rfc4514_string(subject)
        except ValueError as exc:
            raise ValueError(f"subject is not an RFC 4514 name: {exc}") from None
    if sans is not None:
        for s in sans:
            kind, sep, value = s.partition(":")
            if not sep or kind.lower() not in ("dns", "email", "ip", "uri") or not value:
                raise ValueError(f"SAN {s!r}: expected dns:, email:, ip: or uri: followed by a value")
        sans = sorted(_norm_san(s) for s in sans)
    return Expectations(subject=subject, sans=sans, device_id=device_id)


def _norm_san(s: str) -> str:
    kind, _, value = s.partition(":")
    kind = kind.lower()
    if kind in ("dns", "email"):
        value = value.lower()
    if kind == "ip":
        import ipaddress

        value = str(ipaddress.ip_address(value))
    return f"{kind}:{value}"


def san_strings(names) -> list[str]:
    """GeneralNames in the ``kind:value`` form expectations use (DNS names and addresses in lower case), sorted;
    other kinds of name are left out."""
    from cryptography import x509

    out = []
    for name in names:
        if isinstance(name, x509.DNSName):
            out.append(f"dns:{name.value.lower()}")
        elif isinstance(name, x509.RFC822Name):
            out.append(f"email:{name.value.lower()}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"ip:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(f"uri:{name.value}")
    return sorted(out)


def csr_sans(csr) -> list[str]:
    """The SANs a CSR writes, in the ``kind:value`` form expectations use. Not what its certificate carries: a
    profile's policy adds one for each subject emailAddress (IssuancePolicy.subject_and_sans); judge those."""
    from cryptography import x509

    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san_strings(ext)


def check_expectations(vetted: "Vetted", expected: Expectations, *, named_device: str | None = None) -> None:
    """Raise ChallengeRejected when the certificate a request would get (``vetted``: the subject and SANs its
    profile's policy computed, IssuancePolicy.check or subject_and_sans, the SANs the policy derives from the
    subject included), and the device the request names (`named_device`), are not what the challenge was issued
    for: the challenge is then not used up. Never the CSR's own subject and SANs: a certificate carries more than
    the CSR's SAN extension (an e-mail SAN for each subject emailAddress) and less of its subject (`cn_only`)."""
    from cryptography import x509

    subject, sans = vetted
    if expected.device_id is not None and named_device is not None and named_device != expected.device_id:
        raise ChallengeRejected("the request names another device than the one its challenge was issued for")
    if expected.subject is not None and subject != x509.Name.from_rfc4514_string(expected.subject):
        raise ChallengeRejected(f"the certificate's subject {subject.rfc4514_string()!r} is not the one this "
                                f"challenge was issued for ({expected.subject!r})")
    issued = san_strings(sans)
    if expected.sans is not None and issued != sorted(expected.sans):
        raise ChallengeRejected(f"the certificate's subjectAltNames {issued} (those of the CSR and one for each "
                                f"subject emailAddress) are not the ones this challenge was issued for "
                                f"{sorted(expected.sans)}")
