"""The readiness check ``ca.token`` of a deployment whose keys are in a PKCS#11 token: a cheap probe of the token
(the CA and RA keys found by label on a session, scep_server.ca.pkcs11.SessionPool.probe), bounded by a short
timeout and remembered for a few seconds, so that /readyz and a scrape cost nothing per request. A probe of a
token that went away also reopens its sessions when it is back (within the pool's back-off): readiness returns
without an enrolment having to come first.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable

READINESS = "ca.token"
TTL = 5.0  # seconds a probe's answer is reused
TIMEOUT = 2.0  # seconds a probe may take


def pools(cas: dict[str, Any]) -> list:
    """The session pools that hold the keys of these CAs (their CA, RA and earlier RA keys), each once."""
    found: dict[int, Any] = {}
    for ca in cas.values():
        for key in (ca.key, ca.ra_key, *(k for _, k in ca.previous_ras)):
            pool = getattr(key, "pool", None)
            if pool is not None:
                found.setdefault(id(pool), pool)
    return list(found.values())


class TokenCheck:
    """``await check()``: "ok" while every token answers, else "error: ..." naming the token and why."""

    def __init__(self, pools_now: Callable[[], Iterable], *, ttl: float = TTL, timeout: float = TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pools_now, self.ttl, self.timeout, self._clock = pools_now, ttl, timeout, clock
        self._detail: str | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    @property
    def available(self) -> bool | None:
        """The last answer (None before the first probe)."""
        return None if self._detail is None else self._detail == "ok"

    def _probe(self) -> str:
        failed = [detail for pool in self._pools_now() if (detail := pool.probe(self.timeout)) != "ok"]
        return "ok" if not failed else "; ".join(failed)

    async def __call__(self) -> str:
        async with self._lock:  # one probe at a time; the callers that waited for it take its answer
            if self._detail is not None and self._clock() - self._at < self.ttl:
                return self._detail
            try:
                async with asyncio.timeout(self.timeout + 0.5):
                    detail = await asyncio.to_thread(self._probe)
            except TimeoutError:
                detail = f"error: the PKCS#11 token did not answer within {self.timeout + 0.5:g} s"
            self._detail, self._at = detail, self._clock()
            return detail
