"""Every list of the admin API and its command pages by cursor (docs/api.md "Pagination"), on SQLite and
PostgreSQL against a running server: walking the pages with small limits yields each row once and in the
list's order, filters combine with paging, the `Link` header names the next page, a bad limit, cursor or
filter is a 400 problem, and the commands print a page and say how to read on (or every row with --all)."""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
import structlog.testing
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.otp.conftest import make_key, secrets_file
from tests.server import start_app
from trustkit.clock import SettableClock

UTC = timezone.utc
START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PAGE_CAP = 50  # no walk in these tests needs more pages


@pytest.fixture
def clock():
    return SettableClock(START)


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url, clock):
    return await start_app(aiohttp_server, tmp_path, db_url, clock=clock)


@pytest.fixture
async def admin(server):
    _, token = await server.runtime.tokens.create(scope="admin", name="admin", now=server.runtime.clock())
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield Admin(session, server.url)


class Admin:
    def __init__(self, session: aiohttp.ClientSession, url: str):
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, *, expect: int = 200, **kw):
        async with self.session.request(method, self.url + path, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, (path, resp.status, body[:500])
            return resp, body

    async def get(self, path: str, **kw):
        resp, body = await self.call("GET", path, **kw)
        return resp, json.loads(body)

    async def walk(self, path: str, name: str) -> tuple[list[dict], int]:
        """Every row of a list by following `next` from `path`; (rows, pages). Each page's `Link` names `next`,
        `next_cursor` is the cursor in it, and only the last page has neither."""
        rows, url, pages = [], path, 0
        while url is not None:
            assert pages < PAGE_CAP, "the list did not end"
            resp, body = await self.get(url)
            pages += 1
            assert set(body) >= {name, "next_cursor", "next"}
            rows += body[name]
            url = body["next"]
            if url is None:
                assert body["next_cursor"] is None and "Link" not in resp.headers
            else:
                assert resp.headers["Link"] == f'<{url}>; rel="next"'
                assert f"cursor={body['next_cursor']}" in url and url.startswith(path.split("?")[0])
        return rows, pages

    async def problem(self, path: str, code: str | None = None) -> dict:
        resp, body = await self.call("GET", path, expect=400)
        assert resp.content_type == "application/problem+json"
        problem = json.loads(body)
        assert problem["status"] == 400 and (code is None or problem["code"] == code), problem
        return problem


async def hostile_paging(admin: Admin, path: str, foreign_cursor: str) -> None:
    """Bad limits and cursors, and a cursor of another list, are 400 problems with their codes."""
    sep = "&" if "?" in path else "?"
    for limit in ("0", "1001", "-1", "abc", "1.5", "%C2%B2"):
        await admin.problem(f"{path}{sep}limit={limit}", "invalid_limit")
    nulls = [base64.urlsafe_b64encode(json.dumps([None] * n).encode()).decode().rstrip("=") for n in (1, 2, 3)]
    for cursor in ("not-a-cursor", "W10", "x" * 2000, foreign_cursor, *nulls):  # no key column is nullable
        await admin.problem(f"{path}{sep}cursor={cursor}", "invalid_cursor")


def cli(server, db_url: str, *args: str, code: int = 0) -> tuple[str, str]:
    """`scep-server ARGS` on the server's data directory and database: (stdout, stderr)."""
    from scep_server.cli import main

    env = {"SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_LOG__LEVEL": "warning"}
    # the in-process server goes on logging while the command runs, and CliRunner captures the process's
    # stdout: its lines are held aside, so the output is the command's alone
    with structlog.testing.capture_logs():
        result = CliRunner().invoke(main, ["--data-dir", str(server.data_dir), *args], env=env)
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout, result.stderr


async def cli_walk(server, db_url: str, *args: str, limit: int) -> tuple[list[str], int]:
    """Every line a list command prints, page after page through the cursor its note names; (lines, pages)."""
    lines, cursor, pages = [], None, 0
    while pages < PAGE_CAP:
        out, note = await asyncio.to_thread(cli, server, db_url, *args, "--limit", str(limit),
                                            *(["--cursor", cursor] if cursor else []))
        lines += out.splitlines()
        pages += 1
        found = re.search(r"more with --cursor (\S+)", note)
        if found is None:
            return lines, pages
        cursor = found.group(1)
    raise AssertionError("the command's list did not end")


# ---------------------------------------------------------------- devices


async def test_devices_page_in_registration_order(server, admin, clock, db_url):
    ids = []
    for i in range(11):  # two devices share each registration time: the id breaks the tie
        device_id = f"dev-{(i * 7) % 11:02d}"
        await admin.call("POST", "/api/v1/devices", json={"id": device_id}, expect=201)
        ids.append(device_id)
        if i % 2:
            clock.advance(1)
    order = sorted(ids, key=lambda d: (ids.index(d) // 2, d))
    for device_id in order[::3]:
        await admin.call("POST", f"/api/v1/devices/{device_id}/suspend", json={})

    everything, pages = await admin.walk("/api/v1/devices?limit=3", "devices")
    assert [d["id"] for d in everything] == order and pages == 4
    assert [d["id"] for d in (await admin.walk("/api/v1/devices", "devices"))[0]] == order
    suspended, pages = await admin.walk("/api/v1/devices?status=suspended&limit=2", "devices")
    assert [d["id"] for d in suspended] == order[::3] and pages == 2
    assert all(d["status"] == "suspended" for d in suspended)
    _, first = await admin.get("/api/v1/devices?status=suspended&limit=2")
    assert "status=suspended" in first["next"]  # the next page keeps the filter

    await admin.problem("/api/v1/devices?status=lost", "invalid_input")
    await admin.problem("/api/v1/devices?status=Active", "invalid_input")
    await hostile_paging(admin, "/api/v1/devices?status=active", "WzEsMl0")  # [1,2]: not a device key

    lines, pages = await cli_walk(server, db_url, "device", "list", limit=4)
    assert [line.split("\t")[0] for line in lines] == order and pages == 3
    out, note = await asyncio.to_thread(cli, server, db_url, "device", "list", "--all", "--limit", "2",
                                        "--status", "suspended", "--format", "json")
    assert [d["id"] for d in json.loads(out)] == order[::3] and note == ""
    _, note = await asyncio.to_thread(cli, server, db_url, "device", "list", "--cursor", "nope", code=2)
    assert "not a cursor of this list" in note


# ---------------------------------------------------------------- external CAs


def external_ca_pem(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Customer CA {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(START - timedelta(days=1))
            .not_valid_after(START + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(f"http://127.0.0.1:9/{name}.crl")], None, None, None)]),
                critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_external_cas_page_by_name(server, admin, db_url):
    names = [f"customer-{c}" for c in "qwertyu"]
    for name in names:
        await admin.call("POST", "/api/v1/external-cas", json={"name": name, "certificate": external_ca_pem(name)},
                         expect=201)
    everything, pages = await admin.walk("/api/v1/external-cas?limit=2", "external_cas")
    assert [c["name"] for c in everything] == sorted(names) and pages == 4
    await hostile_paging(admin, "/api/v1/external-cas", "WzEsMl0")

    lines, pages = await cli_walk(server, db_url, "ca", "list-external", limit=3)
    assert [line.split("\t")[0] for line in lines] == sorted(names) and pages == 3
    out, _ = await asyncio.to_thread(cli, server, db_url, "ca", "list-external", "--all", "--limit", "1")
    assert [line.split("\t")[0] for line in out.splitlines()] == sorted(names)


# ---------------------------------------------------------------- enrolments


async def test_enrolments_page_in_creation_order(server, admin, db_url):
    from scep_server.store.tables import scep_transactions

    rows = []
    for i in range(13):  # three enrolments share each creation time: profile, then transaction id decide
        at = START + timedelta(seconds=i // 3)
        rows.append(dict(profile=("b-prof", "a-prof")[i % 2], transaction_id=f"tx-{(i * 5) % 13:02d}",
                         state=("pending", "pending", "rejected")[i % 3], message_type=19, csr_der=b"not a csr",
                         public_key_sha256="0" * 64, created_at=at, updated_at=at))
    async with server.runtime.engine.begin() as conn:
        await conn.execute(scep_transactions.insert(), rows)
    ordered = sorted(rows, key=lambda r: (r["created_at"], r["profile"], r["transaction_id"]))

    def keys(listing):
        return [(r["profile"], r["transaction_id"]) for r in listing]

    def expected(state=None, profile=None):
        return [(r["profile"], r["transaction_id"]) for r in ordered
                if (state is None or r["state"] == state) and (profile is None or r["profile"] == profile)]

    pending, pages = await admin.walk("/api/v1/enrolments?limit=2", "enrolments")  # pending by default
    assert keys(pending) == expected("pending") and pages == 5
    assert all(r["subject"] is None and r["sans"] == [] for r in pending)  # an unreadable CSR is shown as such
    everything, pages = await admin.walk("/api/v1/enrolments?state=all&limit=4", "enrolments")
    assert keys(everything) == expected() and pages == 4
    mine, _ = await admin.walk("/api/v1/enrolments?state=pending&profile=a-prof&limit=1", "enrolments")
    assert keys(mine) == expected("pending", "a-prof")
    rejected, _ = await admin.walk("/api/v1/enrolments?state=rejected&limit=3", "enrolments")
    assert keys(rejected) == expected("rejected")

    await admin.problem("/api/v1/enrolments?state=bogus", "invalid_input")
    await admin.problem("/api/v1/enrolments?profile=" + "p" * 65, "invalid_input")
    await admin.problem("/api/v1/enrolments?profile=a%00b", "invalid_input")
    await hostile_paging(admin, "/api/v1/enrolments?state=all", "WyJkZXYiXQ")  # ["dev"]: an external CA key

    lines, pages = await cli_walk(server, db_url, "enrolment", "list", "--state", "all", limit=5)
    assert [tuple(line.split("\t")[:2]) for line in lines] == expected() and pages == 3
    out, note = await asyncio.to_thread(cli, server, db_url, "enrolment", "list", "--all", "--limit", "2",
                                        "--profile", "b-prof", "--format", "json")
    assert keys(json.loads(out)) == expected("pending", "b-prof") and note == ""


# ---------------------------------------------------------------- YubiKeys and OTP clients


async def test_yubikey_report_pages_json_and_csv(server, admin, db_url):
    keys = [make_key(7000 + (i * 3) % 10) for i in range(10)]
    await admin.call("POST", "/api/v1/yubikeys/import", data=secrets_file(keys), expect=201)
    for serial in (7002, 7005, 7008):
        await admin.call("POST", f"/api/v1/yubikeys/{serial}/revoke")
    # a revoked key taken out of the inventory and its hardware imported again: two rows of one serial
    await admin.call("DELETE", "/api/v1/yubikeys/7005")
    await admin.call("POST", "/api/v1/yubikeys/import", data=secrets_file([make_key(7005)]), expect=201)

    serials = [str(7000 + i) for i in range(10)]
    with_twice = sorted(serials + ["7005"])
    report, pages = await admin.walk("/api/v1/yubikeys?limit=3", "keys")
    assert [k["serial"] for k in report] == with_twice and pages == 4
    assert [(k["status"], k["deleted"]) for k in report if k["serial"] == "7005"] == [("REVOKED", True),
                                                                                     ("UNASSIGNED", False)]
    _, first = await admin.get("/api/v1/yubikeys?limit=3&history=0")
    assert first["count"] == 3 and "history" not in first["keys"][0]
    revoked, pages = await admin.walk("/api/v1/yubikeys?status=REVOKED&limit=2", "keys")
    assert [k["serial"] for k in revoked] == ["7002", "7005", "7008"] and pages == 2
    live, _ = await admin.walk("/api/v1/yubikeys?include_deleted=0&limit=4", "keys")
    assert [k["serial"] for k in live] == serials

    # CSV pages alike: one document per page, the next named by the Link header
    seen, url, pages = [], "/api/v1/yubikeys?format=csv&limit=4", 0
    while url and pages < PAGE_CAP:
        resp, body = await admin.call("GET", url)
        pages += 1
        assert resp.content_type == "text/csv"
        seen += [r["serial"] for r in csv.DictReader(io.StringIO(body.decode()))]
        link = resp.headers.get("Link")
        url = re.fullmatch(r'<(.+)>; rel="next"', link).group(1) if link else None
        assert url is None or "format=csv" in url
    assert seen == with_twice and pages == 3

    await admin.problem("/api/v1/yubikeys?status=LOST", "invalid_input")
    await admin.problem("/api/v1/yubikeys?serial=abc", "invalid_input")
    await hostile_paging(admin, "/api/v1/yubikeys?format=csv", "WyJ4Il0")  # ["x"]: not a report key

    lines, pages = await cli_walk(server, db_url, "yubikey", "report", "--format", "csv", limit=4)
    assert [line.split(",")[0] for line in lines if not line.startswith("serial")] == with_twice and pages == 3
    out, note = await asyncio.to_thread(cli, server, db_url, "yubikey", "report", "--all", "--limit", "2",
                                        "--format", "csv", "--exclude-deleted")
    assert [r["serial"] for r in csv.DictReader(io.StringIO(out))] == serials and note == ""
    out, note = await asyncio.to_thread(cli, server, db_url, "yubikey", "report", "--limit", "2", "--status",
                                        "revoked", "--format", "json")
    assert [k["serial"] for k in json.loads(out)["keys"]] == ["7002", "7005"]
    assert note.startswith("2 rows shown; more with --cursor")


async def test_otp_clients_page_by_id(server, admin, db_url):
    made = []
    for i in range(7):
        _, body = await admin.call("POST", "/api/v1/otp-clients", json={"name": f"client {i}"}, expect=201)
        made.append(json.loads(body)["id"])
    clients, pages = await admin.walk("/api/v1/otp-clients?limit=3", "clients")
    assert [c["id"] for c in clients] == sorted(made) and pages == 3
    assert all("api_key" not in c for c in clients)
    await hostile_paging(admin, "/api/v1/otp-clients", "WyJ4Il0")

    lines, pages = await cli_walk(server, db_url, "otp-client", "list", "--format", "json", limit=5)
    assert pages == 2
    out, _ = await asyncio.to_thread(cli, server, db_url, "otp-client", "list", "--all", "--limit", "2",
                                     "--format", "json")
    assert [c["id"] for c in json.loads(out)] == sorted(made)


async def test_rows_added_between_pages_neither_repeat_nor_shift_a_page(server, admin):
    from scep_server.store.tables import scep_transactions

    def row(tx: str, seconds: int) -> dict:
        at = START + timedelta(seconds=seconds)
        return dict(profile="p", transaction_id=tx, state="pending", message_type=19, csr_der=b"-",
                    public_key_sha256="0" * 64, created_at=at, updated_at=at)

    async with server.runtime.engine.begin() as conn:
        await conn.execute(scep_transactions.insert(), [row(f"tx-{i}", i * 10) for i in range(6)])
    _, first = await admin.get("/api/v1/enrolments?limit=3")
    assert [r["transaction_id"] for r in first["enrolments"]] == ["tx-0", "tx-1", "tx-2"]
    async with server.runtime.engine.begin() as conn:  # one before the cursor, one after it, one at the end
        await conn.execute(scep_transactions.insert(), [row("early", 5), row("middle", 35), row("late", 99)])
    rest, _ = await admin.walk(first["next"], "enrolments")
    assert [r["transaction_id"] for r in rest] == ["tx-3", "middle", "tx-4", "tx-5", "late"]
