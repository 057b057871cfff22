"""The CAs a process has loaded are read by the SCEP threads (the names never issued, which CA signed a request,
which RA an envelope is addressed to) while the event loop picks up a CA rollover activated elsewhere and puts the
new CA first. Reordering the mapping in place left it empty for a moment, and stopped a reader in the middle of its
iteration with "dictionary changed size during iteration" (an HTTP 500, or names checked against a partial list).
A reader now goes through one whole mapping, and the next one sees the new CA first."""
from __future__ import annotations

from scep_server.ca.lifecycle import activate_rollover, pick_up_cas, prepare_rollover
from tests.server import start_app


async def test_a_reader_in_the_middle_of_the_cas_finishes_on_the_mapping_it_began_with(aiohttp_server, tmp_path,
                                                                                        db_url):
    first = await start_app(aiohttp_server, tmp_path, db_url)
    other = await start_app(aiohttp_server, tmp_path, db_url)
    await prepare_rollover(first.runtime, "default", actor="test")
    assert (await activate_rollover(first.runtime, "default", actor="test"))["active"] == "default-g2"

    cas = other.runtime.cas
    assert other.runtime.scep.cas is cas  # the mapping the SCEP service's threads read
    reading = iter(cas.values())  # a SCEP thread half-way through, e.g., the names never issued
    began = [next(reading)]
    assert await pick_up_cas(other.runtime) == ["default-g2"]
    began += list(reading)
    assert [ca.name for ca in began] == ["default"]

    assert list(cas) == ["default-g2", "default"]  # the next reader sees the new CA first
    assert other.runtime.scep.cas is cas
    new = cas["default-g2"]
    assert set(new.reserved_names) <= set(other.runtime.scep.reserved_names())
