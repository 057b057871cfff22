"""What an operator drives, end to end against a real deployment: two `scep-server serve` workers on one
database (SQLite and PostgreSQL), driven only through the admin API with a token: a profile made, devices
enrolled, the inventory paged, a certificate revoked, the audit trail naming the token, request ids echoed,
the API document served."""
from __future__ import annotations

import aiohttp
from yarl import URL

from tests.admin.test_cross_process import _admin_token, _enrol
from tests.server import serve_processes
from scep_server.scep import PKIStatus

DEVICES = 6


async def _json(session: aiohttp.ClientSession, method: str, url: str, token: str, **kw) -> tuple[int, dict, dict]:
    async with session.request(method, url, headers={"Authorization": f"Bearer {token}",
                                                     **kw.pop("headers", {})}, **kw) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def test_an_operator_drives_a_two_worker_deployment_through_the_api(tmp_path, db_url):
    with serve_processes(tmp_path / "data", db_url, workers=2) as (url,):
        token_id, token = await _admin_token(db_url)
        async with aiohttp.ClientSession() as s:
            status, made, _ = await _json(s, "POST", f"{url}/api/v1/profiles", token, json={"name": "fleet"})
            assert status == 201 and made["secret"]
            for _ in range(DEVICES):
                assert await _enrol(s, url, "fleet", made["secret"]) is PKIStatus.SUCCESS

            serials, link, pages = [], f"{url}/api/v1/certificates?profile=fleet&limit=4", 0
            while link and pages < 10:
                status, page, headers = await _json(s, "GET", link, token)
                assert status == 200
                serials += [c["serial"] for c in page["certificates"]]
                link = str(URL(url).join(URL(page["next"]))) if page["next"] else None
                assert ("Link" in headers) == bool(page["next"])
                pages += 1
            assert pages == 2 and len(set(serials)) == DEVICES

            status, revoked, headers = await _json(s, "POST", f"{url}/api/v1/certificates/{serials[0]}/revoke",
                                                   token, json={"reason": "key-compromise"},
                                                   headers={"X-Request-ID": "ops-change-1"})
            assert status == 200 and revoked["status"] == "revoked"
            assert headers["X-Request-ID"] == "ops-change-1"

            status, events, _ = await _json(s, "GET", f"{url}/api/v1/events?kind=pki.cert.*&subject={serials[0]}",
                                            token)
            assert status == 200
            kinds = {(e["kind"], e["actor"]) for e in events["events"]}
            assert ("pki.cert.revoke", f"token:{token_id}:cross") in kinds

            status, listed, _ = await _json(s, "GET", f"{url}/api/v1/tokens", token)
            assert status == 200 and [t["id"] for t in listed["tokens"]] == [token_id]

            async with s.get(f"{url}/api/v1/openapi.json") as resp:
                document = await resp.json()
            assert "/api/v1/certificates/{serial}/revoke" in document["paths"]
