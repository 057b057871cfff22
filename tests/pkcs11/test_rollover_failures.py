"""A CA rollover in the PKCS#11 token when something goes wrong: a `prepare` whose key generation fails removes
what it made (the next labels' record, the key pairs it generated) so that a retry works, or names what to
delete; an earlier CA whose keys are no longer in the token (or are not its own) is left out at start-up and by
the running server's pick-up (`ca.skipped`), while the active CA must load."""
from __future__ import annotations

import json

import pkcs11
import pytest
from structlog.testing import capture_logs

from scep_server.ca import lifecycle
from scep_server.ca import pkcs11 as token_module
from scep_server.ca.pkcs11 import HsmError
from scep_server.runtime import CaKeysUnavailable, Uses, open_runtime
from tests.app.test_start_errors import _logging_as_it_was  # noqa: F401 - fixture: the command sets up logging
from tests.server import start_app

from .test_rollover import TOKEN_CA, key_files, token_keys


def fail_second_generation(monkeypatch) -> list[str]:
    """Key generation in the token works once, then the token refuses the mechanism (as a token policy or a
    full token would answer); the labels asked for."""
    real, asked = token_module._generate, []

    def generate(session, label, *args, **kwargs):
        asked.append(label)
        if len(asked) > 1:
            raise pkcs11.MechanismInvalid()
        return real(session, label, *args, **kwargs)

    monkeypatch.setattr(token_module, "_generate", generate)
    return asked


def token_labels(softhsm) -> set[str]:
    """The labels of every object of the token."""
    probe = token_keys(softhsm)
    try:
        with probe.pool.session() as s:
            return {obj[pkcs11.Attribute.LABEL] for obj in s.get_objects({})}
    finally:
        probe.close()


def delete_from_token(softhsm, label: str) -> None:
    probe = token_keys(softhsm)
    try:
        with probe.pool.session() as s:
            objects = list(s.get_objects({pkcs11.Attribute.LABEL: label}))
            assert objects, label
            for obj in objects:
                obj.destroy()
    finally:
        probe.close()


async def test_a_prepare_whose_key_generation_fails_removes_what_it_made_and_a_retry_works(
        aiohttp_server, tmp_path, db_url, softhsm, monkeypatch):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    runtime = server.runtime
    directory = server.data_dir / "ca" / "default"
    before_files, before_labels = sorted(p.name for p in directory.iterdir()), token_labels(softhsm)
    asked = fail_second_generation(monkeypatch)
    with pytest.raises(HsmError, match="scep-ra-g2"):
        await lifecycle.prepare_rollover(runtime, "default", actor="test")
    assert asked == ["scep-ca-g2", "scep-ra-g2"]  # the CA key was made, the RA key refused
    # the record and the CA key pair made in that call are gone: the token and the directory are as before
    assert sorted(p.name for p in directory.iterdir()) == before_files
    assert token_labels(softhsm) == before_labels
    assert not runtime.cas["default"].next_ca_certs
    monkeypatch.undo()
    # the pool forgot the deleted label: the token is ready, and the current CA still signs there
    assert runtime.cas["default"].key.store.probe() == "ok"
    prepared = await lifecycle.prepare_rollover(runtime, "default", actor="test")
    assert json.loads((directory / "next-key-labels.json").read_text()) == {"ca": "scep-ca-g2", "ra": "scep-ra-g2"}
    assert (await lifecycle.activate_rollover(runtime, "default", actor="test"))["active"] == "default-g2"
    new_ca = runtime.cas["default-g2"]
    assert format(new_ca.cert.serial_number, "x") == prepared["next_ca_certificates"][0]["serial"]
    assert (new_ca.key.label, new_ca.ra_key.label) == ("scep-ca-g2", "scep-ra-g2")
    assert key_files(server.data_dir) == []


async def test_a_prepare_that_cannot_remove_what_it_made_names_it(aiohttp_server, tmp_path, db_url, softhsm,
                                                                  monkeypatch):
    from scep_server.ca.pkcs11 import Pkcs11Keys
    from scep_server.ca.rollover import PrepareNotUndone

    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    directory = server.data_dir / "ca" / "default"
    fail_second_generation(monkeypatch)

    def token_gone(self):
        raise HsmError("PKCS#11 token 'x' is unavailable")

    monkeypatch.setattr(Pkcs11Keys, "discard_generated", token_gone)
    with pytest.raises(PrepareNotUndone) as failed:
        await lifecycle.prepare_rollover(server.runtime, "default", actor="test")
    message = str(failed.value)
    assert "MechanismInvalid" in message and "'scep-ca-g2' and 'scep-ra-g2'" in message
    assert str(directory / "next-key-labels.json") in message
    assert (directory / "next-key-labels.json").exists()  # it names the keys that are still to delete


async def test_an_interrupted_prepare_is_refused_naming_what_to_delete(aiohttp_server, tmp_path, db_url, softhsm):
    from scep_server.ca.rollover import NotPrepared, RolloverPrepared

    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    record = server.data_dir / "ca" / "default" / "next-key-labels.json"
    record.write_text(json.dumps({"ca": "scep-ca-g2", "ra": "scep-ra-g2"}))  # a prepare killed half way
    for call, error in ((lifecycle.prepare_rollover, RolloverPrepared), (lifecycle.activate_rollover, NotPrepared)):
        with pytest.raises(error) as refused:
            await call(server.runtime, "default", actor="test")
        assert "delete the key objects labelled 'scep-ca-g2' and 'scep-ra-g2'" in str(refused.value)
        assert str(record) in str(refused.value) and "interrupted" in str(refused.value)


@pytest.mark.parametrize("damage", ["deleted", "replaced"])
async def test_an_earlier_ca_without_its_keys_in_the_token_is_skipped_and_the_server_starts(
        aiohttp_server, tmp_path, db_url, softhsm, damage):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    runtime = server.runtime
    await lifecycle.prepare_rollover(runtime, "default", actor="test")
    await lifecycle.activate_rollover(runtime, "default", actor="test")
    # housekeeping: the old generation's key deleted from the token (or another key put under its label)
    delete_from_token(softhsm, "scep-ca")
    if damage == "replaced":
        probe = token_keys(softhsm)
        try:
            probe.ca_key(create=("rsa", 2048))
        finally:
            probe.close()
    with capture_logs() as logs:
        async with open_runtime(runtime.settings, uses=Uses(ca_keys=True)) as restarted:
            assert list(restarted.cas) == ["default-g2"]
            assert list(restarted.skipped_cas) == ["default"]
            # the running server's pick-up leaves it out too, and does not look for it again
            assert await lifecycle.pick_up_cas(restarted) == []
    skipped = [e for e in logs if e["event"] == "ca.skipped"]
    assert len(skipped) == 1 and skipped[0]["ca"] == "default" and skipped[0]["log_level"] == "warning"
    assert ("no private key labelled 'scep-ca'" if damage == "deleted" else "not the key of ca.crt") in \
        skipped[0]["error"]
    assert not [e for e in logs if e["event"] == "ca.load_failed"]
    # a server's services (CRL publishers, OCSP, SCEP) open over it: the active CA only
    async with open_runtime(runtime.settings) as served:
        assert list(served.cas) == ["default-g2"] and list(served.skipped_cas) == ["default"]
        assert served.crl is not None


async def test_the_active_ca_must_load(aiohttp_server, tmp_path, db_url, softhsm):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    runtime = server.runtime
    await lifecycle.prepare_rollover(runtime, "default", actor="test")
    await lifecycle.activate_rollover(runtime, "default", actor="test")
    delete_from_token(softhsm, "scep-ca-g2")
    with pytest.raises(CaKeysUnavailable, match="for CA 'default-g2'.*scep-ca-g2"):
        async with open_runtime(runtime.settings, uses=Uses(ca_keys=True)):
            pass


async def test_the_pick_up_skips_an_earlier_ca_whose_key_is_gone_once(aiohttp_server, tmp_path, db_url, softhsm):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    runtime = server.runtime
    await lifecycle.prepare_rollover(runtime, "default", actor="test")
    await lifecycle.activate_rollover(runtime, "default", actor="test")
    # a process that has not loaded the earlier CA yet, whose key is deleted from the token meanwhile
    del runtime.cas["default"]
    delete_from_token(softhsm, "scep-ca")
    with capture_logs() as logs:
        assert await lifecycle.pick_up_cas(runtime) == []
        assert await lifecycle.pick_up_cas(runtime) == []
    assert [(e["event"], e["ca"]) for e in logs if e["event"].startswith("ca.")] == [("ca.skipped", "default")]
    assert list(runtime.cas) == ["default-g2"] and list(runtime.skipped_cas) == ["default"]


async def test_a_token_failure_while_loading_an_earlier_ca_stops_the_start(aiohttp_server, tmp_path, db_url, softhsm,
                                                                           monkeypatch):
    """Only the token's answer that it holds no such key (or not the CA's) leaves an earlier CA out. A failure of
    the search itself (the token's memory exhausted) says nothing about the key: leaving the CA out on it would stop its CRL
    until the next restart, so the start fails as it does for the active CA."""
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    runtime = server.runtime
    await lifecycle.prepare_rollover(runtime, "default", actor="test")
    await lifecycle.activate_rollover(runtime, "default", actor="test")
    real = token_module._find_public

    def device_error(session, label, token):
        if label == "scep-ca":  # the earlier CA's key: the token fails the search
            raise pkcs11.DeviceMemory()
        return real(session, label, token)

    monkeypatch.setattr(token_module, "_find_public", device_error)
    with pytest.raises(CaKeysUnavailable, match="for CA 'default'.*DeviceMemory"):
        async with open_runtime(runtime.settings, uses=Uses(ca_keys=True)):
            pass


async def test_a_prepare_the_token_refuses_is_a_409_and_one_command_line(aiohttp_server, tmp_path, db_url, softhsm,
                                                                         monkeypatch, _logging_as_it_was):
    """What the token answered (a mechanism refused, a full token) once the prepare removed what it made: a 409
    `token_refused` from the API and one line from the command, never a 500 or a traceback."""
    import asyncio

    from .test_rollover import admin_post

    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    fail_second_generation(monkeypatch)
    status, problem = await admin_post(server, "default/rollover/prepare")
    assert (status, problem["code"]) == (409, "token_refused") and "scep-ra-g2" in problem["detail"], problem
    monkeypatch.undo()
    fail_second_generation(monkeypatch)
    from click.testing import CliRunner

    from scep_server.cli import main

    result = await asyncio.to_thread(CliRunner().invoke, main, ["--data-dir", str(server.data_dir), "ca", "rollover",
                                                                 "prepare"],
                                     env={**softhsm.env(), "SCEP_SERVER_LOG__LEVEL": "warning"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "scep-ra-g2" in result.output and "Traceback" not in result.output, result.output
