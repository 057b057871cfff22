"""The admin API of profiles and tokens, against a real server on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from tests.server import RunningServer, start_app
from trustkit.clock import SettableClock


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5))


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url, clock) -> RunningServer:
    return await start_app(aiohttp_server, tmp_path, db_url, clock=clock)


@pytest.fixture
async def admin(server) -> str:
    _, token = await server.runtime.tokens.create(scope="admin", name="admin-tests", now=server.runtime.clock())
    return token


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def is_admin_token(actor: str) -> bool:
    """Whether an event's actor is the `admin` fixture's token (``token:<id>:admin-tests``)."""
    import re

    return re.fullmatch(r"token:[0-9a-f]{16}:admin-tests", actor) is not None


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(session: aiohttp.ClientSession, method: str, url: str, token: str | None, *, json=None,
               data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, aiohttp.typedefs.LooseHeaders]:
    """(status, JSON body, headers) of one request."""
    all_headers = {**(auth(token) if token else {}), **(headers or {})}
    async with session.request(method, url, json=json, data=data, headers=all_headers) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp.headers
