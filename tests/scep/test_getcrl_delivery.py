"""A GetCRL answer built within `delivering()` keeps its place in the lane until the delivery is done (the HTTP
layer: once the answer is sent, cut, or its connection gone) as well as built; without a delivery the place is
given back once the answer is built, as before. Every path gives the place back exactly once."""
from __future__ import annotations

import asyncio
import threading

import pytest

from scep_server.enrolment.getcrl import GetCrlBusy, GetCrlLane, delivering

GUARD = 30  # seconds: only bounds a test that fails


async def crl() -> bytes:
    return b"\x30\x03\x02\x01\x01"


@pytest.fixture
async def lane():
    lane = GetCrlLane(limit=1)
    yield lane
    await lane.close()


async def until_empty(lane: GetCrlLane) -> None:
    for _ in range(GUARD * 100):
        if lane.in_lane == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{lane.in_lane} places still held")


async def test_without_a_delivery_the_place_is_given_back_once_built(lane):
    await lane.answer("ca", crl, lambda content: b"reply")
    await until_empty(lane)
    await lane.answer("ca", crl, lambda content: b"reply")


async def test_an_answer_holds_its_place_until_delivered(lane):
    with delivering() as delivery:
        content, reply = await lane.answer("ca", crl, lambda content: b"reply")
    assert reply == b"reply"
    await asyncio.sleep(0.05)
    assert lane.in_lane == 1
    with pytest.raises(GetCrlBusy):  # built, not delivered: the lane is full
        await lane.answer("ca", crl, lambda content: b"reply")
    delivery.done()
    assert lane.in_lane == 0
    delivery.done()  # once only
    assert lane.in_lane == 0
    await lane.answer("ca", crl, lambda content: b"reply")


async def test_a_delivery_ended_before_the_answer_is_built_gives_the_place_back_once_built(lane):
    started, release = threading.Event(), threading.Event()

    def slow(content: bytes) -> bytes:
        started.set()
        release.wait(GUARD)
        return b"reply"

    with delivering() as delivery:
        task = asyncio.create_task(lane.answer("ca", crl, slow))
        assert await asyncio.to_thread(started.wait, GUARD)
    task.cancel()  # the client went away while its answer was being built
    with pytest.raises(asyncio.CancelledError):
        await task
    delivery.done()
    assert lane.in_lane == 1  # the lane is still building it
    release.set()
    await until_empty(lane)


async def test_a_failure_before_building_gives_the_place_back_at_once(lane):
    async def not_ready() -> bytes:
        raise LookupError("no CRL yet")

    with delivering() as delivery:
        with pytest.raises(LookupError):
            await lane.answer("ca", not_ready, lambda content: b"reply")
    assert lane.in_lane == 0
    delivery.done()
    assert lane.in_lane == 0


async def test_a_delivery_already_done_does_not_hold_a_later_answer(lane):
    with delivering() as delivery:
        delivery.done()
        await lane.answer("ca", crl, lambda content: b"reply")
    await until_empty(lane)
