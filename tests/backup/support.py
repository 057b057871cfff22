"""Helpers of the backup and restore tests: the command line beside an in-process server, SCEP enrolment,
the CRL a server serves, and temporary PostgreSQL databases."""
from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path

import aiohttp
import structlog
from click.testing import CliRunner
from cryptography import x509
from sqlalchemy.engine import make_url

from scep_server.scep import client
from scep_server.scep.types import MessageType, PKIStatus


def cli(*args: str, env: dict | None = None, code: int = 0) -> str:
    """`scep-server ARGS` in-process (run it on a thread beside an in-process server); its output."""
    from scep_server.cli import main

    environ = {"SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_CA__KEY_SIZE": "2048", **(env or {})}
    with structlog.testing.capture_logs():  # the in-process server's lines stay out of the command's output
        result = CliRunner().invoke(main, list(args), env=environ)
    assert result.exit_code == code, (result.output, result.exception)
    if code and result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"the command failed with a traceback, not a message: {result.exception!r}")
    return result.output


def data_with_a_key(root: Path, serial: int) -> Path:
    """A data directory under `root` after `init`, with the OTP key of YubiKey `serial` imported."""
    from scep_server.cli import main
    from tests.otp.conftest import make_key, secrets_file

    data = root / "data"
    cli("--data-dir", str(data), "init")
    result = CliRunner().invoke(main, ["--data-dir", str(data), "yubikey", "import", "-"],
                                input=secrets_file([make_key(serial)]).decode(),
                                env={"SCEP_SERVER_LOG__LEVEL": "warning"})
    assert result.exit_code == 0, result.output
    return data


def refused(tmp_path: Path, backup: Path, *extra: str) -> str:
    """`restore` of `backup` into a new data directory under `tmp_path`, refused: its output. Nothing is written,
    no staging directory is left."""
    new = tmp_path / "new" / "data"
    new.parent.mkdir(exist_ok=True)
    out = cli("restore", str(backup), "--data-dir", str(new), *extra, code=1)
    assert "restore refused" in out
    assert not list(new.parent.iterdir())  # nothing written, no staging left
    return out


async def ra_der(url: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/scep/default?operation=GetCACert") as resp:
            assert resp.status == 200
            return client.certs_in_order(await resp.read())[0]


def pkcs_req(key, ra: bytes, challenge: str, cn: str, txid: str) -> bytes:
    return client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, cn, challenge=challenge),
        signer_cert_der=client.make_self_signed_signer(key, cn=cn), signer_key=key, recipient_cert_der=ra,
        transaction_id=txid, sender_nonce=secrets.token_bytes(16), cek=secrets.token_bytes(16),
        iv=secrets.token_bytes(16))


async def enrol(session: aiohttp.ClientSession, url: str, key, ra: bytes, challenge: str, cn: str) -> x509.Certificate:
    """One SCEP enrolment over HTTP; the issued certificate (SUCCESS asserted)."""
    txid = f"tx-{cn}"
    body = await asyncio.to_thread(pkcs_req, key, ra, challenge, cn, txid)
    async with session.post(f"{url}/scep/default?operation=PKIOperation", data=body,
                            headers={"Content-Type": "application/x-pki-message"}) as resp:
        assert resp.status == 200
        reply = await resp.read()
    rep = await asyncio.to_thread(client.parse_cert_rep, reply, key, ra_cert_der=ra)
    assert rep.status is PKIStatus.SUCCESS, (rep.fail_info, rep.fail_text)
    return x509.load_der_x509_certificate(rep.certs[0])


def crl_number(der: bytes) -> int:
    return x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def served_crl(url: str, ca: str = "default", *, above: int = 0, timeout: float = 20) -> x509.CertificateRevocationList:
    """The CRL `url` serves, once its number is above `above`."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{url}/crl/{ca}.crl") as resp:
                if resp.status == 200:
                    der = await resp.read()
                    if crl_number(der) > above:
                        return x509.load_der_x509_crl(der)
            assert asyncio.get_running_loop().time() < deadline, f"no CRL numbered above {above} served"
            await asyncio.sleep(0.1)


async def pg_database() -> str:
    """A new, empty PostgreSQL database (dropped by drop_pg_database); skips when PostgreSQL is unreachable."""
    from tests.conftest import PG_ADMIN_URL, _pg_admin
    from tests.helpers import missing

    name = f"scep_bk_{uuid.uuid4().hex[:12]}"
    try:
        await _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any connection failure means "PostgreSQL missing"
        missing(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc!r}")
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(url: str) -> None:
    from tests.conftest import _pg_admin

    await _pg_admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
