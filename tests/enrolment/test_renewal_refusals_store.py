"""The refused renewal requests every enrolment repository remembers (checks.Renewal): found by signer and request,
at most RENEWAL_REFUSALS_PER_SIGNER per signer (the newest), none once their signer has expired. In memory, SQLite
and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

from scep_server.enrolment.repository import RENEWAL_REFUSALS_PER_SIGNER
from tests.enrolment.test_repositories import ca, repo, repo_url  # noqa: F401 - fixtures
from tests.factories import NOW

LATER = NOW + timedelta(days=30)


def sha(i: int) -> str:
    return f"{i:064x}"


async def test_a_refused_request_is_found_by_its_signer_and_digest(repo):
    assert not await repo.renewal_refused_before("0a", sha(1))
    await repo.remember_refused_renewal("0a", sha(1), signer_not_after=LATER, now=NOW)
    await repo.remember_refused_renewal("0a", sha(1), signer_not_after=LATER, now=NOW)  # twice: one record
    assert await repo.renewal_refused_before("0a", sha(1))
    assert not await repo.renewal_refused_before("0a", sha(2))
    assert not await repo.renewal_refused_before("0b", sha(1))


async def test_each_signer_keeps_its_newest_records_only(repo):
    extra = 5
    for i in range(RENEWAL_REFUSALS_PER_SIGNER + extra):
        await repo.remember_refused_renewal("0a", sha(i), signer_not_after=LATER, now=NOW + timedelta(seconds=i))
    await repo.remember_refused_renewal("0b", sha(0), signer_not_after=LATER, now=NOW)
    kept = [i for i in range(RENEWAL_REFUSALS_PER_SIGNER + extra) if await repo.renewal_refused_before("0a", sha(i))]
    assert kept == list(range(extra, RENEWAL_REFUSALS_PER_SIGNER + extra))
    assert await repo.renewal_refused_before("0b", sha(0))  # another signer's records are its own


async def test_records_of_an_expired_signer_are_forgotten(repo):
    await repo.remember_refused_renewal("0a", sha(1), signer_not_after=NOW + timedelta(days=1), now=NOW)
    await repo.remember_refused_renewal("0b", sha(1), signer_not_after=LATER, now=NOW)
    await repo.remember_refused_renewal("0b", sha(2), signer_not_after=LATER, now=NOW + timedelta(days=2))
    assert not await repo.renewal_refused_before("0a", sha(1))
    assert await repo.renewal_refused_before("0b", sha(1)) and await repo.renewal_refused_before("0b", sha(2))
