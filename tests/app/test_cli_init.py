"""`scep-server init` flags and questions (the RA mode among them), and `serve` refusing to make a CA of its own
on a shared database."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from scep_server import cli as cli_module
from scep_server.cli import main
from scep_server.config import load_settings
from scep_server.profiles import ProfileStore
from scep_server.runtime import load_cas
from trustkit.db import create_engine


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    for name in ("SCEP_SERVER_CONFIG", "SCEP_SERVER_DATABASE__URL", "SCEP_SERVER_SERVER__BASE_URL",
                 "SCEP_SERVER_CA__SUBJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCEP_SERVER_LOG__LEVEL", "warning")
    monkeypatch.setenv("SCEP_SERVER_CHALLENGE__SCRYPT_LOG2_N", "10")
    data = tmp_path / "data"

    def invoke(*args: str, input: str | None = None, code: int = 0, tty: bool = False, data_dir: Path = data):
        monkeypatch.setattr(cli_module, "_interactive", lambda: tty)
        result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], input=input)
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    invoke.data = data
    return invoke


def _ca(data: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data / "ca" / "default" / "ca.crt").read_bytes())


def _ra(data: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data / "ca" / "default" / "ra.crt").read_bytes())


def _profiles(data: Path) -> list[str]:
    async def names():
        engine = create_engine(f"sqlite+aiosqlite:///{data / 'scep.db'}")
        try:
            return [p.name for p in await ProfileStore(engine).list()]
        finally:
            await engine.dispose()

    return asyncio.run(names())


def _days(cert: x509.Certificate) -> int:
    return round((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400)


def _cdp(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value


def test_flags_make_the_ca_they_describe(run_cli):
    out = run_cli("init", "--ca-subject", "CN=Lab Issuing CA,O=Lab", "--key-type", "rsa", "--key-size", "2048",
                  "--validity-days", "400", "--base-url", "https://scep.lab.example", "--no-default-profile")
    ca = _ca(run_cli.data)
    assert ca.subject.rfc4514_string() == "CN=Lab Issuing CA,O=Lab"
    assert ca.public_key().key_size == 2048 and _days(ca) == 400
    assert _cdp(_ra(run_cli.data)) == "https://scep.lab.example/crl/default.crl"
    assert _profiles(run_cli.data) == [] and "profile" not in out
    # serve takes the base URL from its configuration, not from what init was given: init says so
    assert 'server.base_url = "https://scep.lab.example"' in out
    assert "certificates will name" not in out


def test_without_a_terminal_nothing_is_asked_and_defaults_apply(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    out = run_cli("init", input="")  # a question would read the empty input and fail
    ca = _ca(run_cli.data)
    assert ca.subject.rfc4514_string() == "CN=Device Trust Issuing CA,O=Device Trust"
    assert _days(ca) == 3650 and ca.public_key().key_size == 2048
    assert _profiles(run_cli.data) == ["default"]
    assert "certificates will name http://127.0.0.1:8080" in out and "?" not in out.replace("?operation", "")
    assert "already initialised" in run_cli("init")


def test_on_a_terminal_what_is_not_given_is_asked(run_cli):
    answers = "\n".join(["O=Bad,,=", "CN=Asked CA,O=Lab",   # a name that does not parse is asked again
                         "rsa", "1024", "2048", "30", "https://pki.example.com", "n"]) + "\n"
    out = run_cli("init", input=answers, tty=True)
    assert "CA subject" in out and "Public base URL devices reach" in out and "Create a static SCEP profile" in out
    assert "not an RFC 4514 name" in out and "1024 is not in the range" in out
    ca = _ca(run_cli.data)
    assert ca.subject.rfc4514_string() == "CN=Asked CA,O=Lab" and _days(ca) == 30
    assert ca.public_key().key_size == 2048
    assert _cdp(_ra(run_cli.data)) == "https://pki.example.com/crl/default.crl"
    assert _profiles(run_cli.data) == []


def test_on_a_terminal_given_flags_are_not_asked_and_defaults_are_one_return_away(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    out = run_cli("init", "--ca-subject", "CN=Flag CA", "--validity-days", "90", input="\n\n\n\n", tty=True)
    assert "CA subject" not in out and "CA validity" not in out
    ca = _ca(run_cli.data)
    assert ca.subject.rfc4514_string() == "CN=Flag CA" and _days(ca) == 90 and ca.public_key().key_size == 2048
    assert _cdp(_ra(run_cli.data)) == "http://127.0.0.1:8080/crl/default.crl"
    assert "server.base_url =" not in out  # the default base URL was kept: nothing to carry over
    assert _profiles(run_cli.data) == ["default"]


def test_no_input_never_asks_even_on_a_terminal(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    out = run_cli("init", "--no-input", input="", tty=True)
    assert "CA subject" not in out and _profiles(run_cli.data) == ["default"]


def test_nothing_is_asked_once_the_ca_exists_and_its_flags_are_said_to_change_nothing(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    run_cli("init", "--no-input")
    before = _ca(run_cli.data)
    out = run_cli("init", "--ca-subject", "CN=Other", input="", tty=True)
    assert "do not change it" in out and "CA subject" not in out
    assert _ca(run_cli.data) == before


@pytest.mark.parametrize("args, message", [
    (["--ca-subject", "not a name"], "not an RFC 4514 name"),
    (["--ca-subject", ""], "empty name"),
    (["--key-size", "1024"], "1024 is not in the range"),
    (["--key-type", "dsa"], "'dsa' is not one of 'rsa', 'ec-p256', 'ec-p384'"),
    (["--validity-days", "0"], "0 is not in the range"),
])
def test_bad_flags_are_usage_errors(run_cli, args, message):
    out = run_cli("init", *args, code=2)
    assert message in out
    assert not (run_cli.data / "ca" / "default" / "ca.crt").exists()


def test_a_base_url_that_is_no_http_url_names_the_key(run_cli):
    out = run_cli("init", "--base-url", "scep.example.com", code=1)
    assert "server.base_url" in out and "http or https URL" in out
    assert not (run_cli.data / "ca" / "default" / "ca.crt").exists()


def _get_ca_cert(data: Path) -> list[x509.Certificate]:
    """The certificates GetCACert serves for the CA in ``data``, as a server starting there loads them."""
    ca = load_cas(load_settings(None, data_dir=str(data)))["default"]
    return [x509.load_der_x509_certificate(d) for d in ca.ca_cert_ders]


def _shape(cert: x509.Certificate) -> tuple:
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    return (cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, usage.digital_signature,
            usage.key_encipherment, usage.data_encipherment, cert.subject.rfc4514_string())


def _ra_files(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "ca" / "default").glob("ra*.crt"))


def test_ra_mode_split_starts_the_ca_as_renew_ra_mode_split_leaves_it(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    out = run_cli("init", "--ra-mode", "split", "--no-input")
    assert "split RA certificates" in out
    signing, encryption, authority = certs = _get_ca_cert(run_cli.data)
    assert [_shape(c)[:4] for c in certs] == [(False, True, False, False),   # signs only
                                             (False, False, True, True),    # decrypts only
                                             (True, True, False, False)]    # the CA
    assert signing.subject == encryption.subject == _ra(run_cli.data).subject
    assert signing.public_key() != encryption.public_key()
    for cert in (signing, encryption):
        cert.verify_directly_issued_by(authority)
    assert _ra_files(run_cli.data) == ["ra-enc.crt", "ra.crt"]  # no single RA certificate beside them
    # the same order and shape as a CA made with one RA certificate and switched by `ca renew-ra --mode split`
    switched = tmp_path / "switched"
    run_cli("init", "--no-input", data_dir=switched)
    run_cli("ca", "renew-ra", "--mode", "split", data_dir=switched)
    assert [_shape(c) for c in _get_ca_cert(switched)] == [_shape(c) for c in certs]


@pytest.mark.parametrize("setting, args, mode", [
    (None, [], "single"),
    ("split", [], "split"),  # --ra-mode defaults to ca.ra_mode
    ("split", ["--ra-mode", "single"], "single"),
])
def test_ra_mode_defaults_to_the_setting_which_defaults_to_one_ra_certificate(run_cli, monkeypatch, setting, args,
                                                                               mode):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    if setting:
        monkeypatch.setenv("SCEP_SERVER_CA__RA_MODE", setting)
    run_cli("init", "--no-input", *args)
    certs = _get_ca_cert(run_cli.data)
    if mode == "single":
        assert [_shape(c)[:4] for c in certs] == [(False, True, True, False), (True, True, False, False)]
        assert _ra_files(run_cli.data) == ["ra.crt"]
    else:
        assert len(certs) == 3 and _ra_files(run_cli.data) == ["ra-enc.crt", "ra.crt"]


def test_ra_mode_does_not_change_an_existing_ca(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    run_cli("init", "--no-input")
    out = run_cli("init", "--ra-mode", "split")
    assert "--ra-mode do not change it" in out and "ca renew-ra --mode" in out
    assert len(_get_ca_cert(run_cli.data)) == 2 and _ra_files(run_cli.data) == ["ra.crt"]


def test_ra_mode_split_is_refused_with_the_keys_in_a_token(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_BACKEND", "pkcs11")
    monkeypatch.setenv("SCEP_SERVER_CA__PKCS11_MODULE", "/nonexistent/libsofthsm2.so")
    monkeypatch.setenv("SCEP_SERVER_CA__PKCS11_TOKEN_LABEL", "scep")
    out = run_cli("init", "--ra-mode", "split", "--no-input", code=1)
    assert 'ra_mode = "split" needs key_backend = "file"' in out
    assert not (run_cli.data / "ca" / "default" / "ca.crt").exists()


def test_serve_does_not_make_a_ca_on_a_shared_postgresql_database(run_cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_DATABASE__URL", "postgresql://postgres@127.0.0.1:5432/test")
    out = run_cli("serve", "--listen", "127.0.0.1:0", code=1)
    assert "run `scep-server init` once" in out and "PostgreSQL" in out
    assert not (run_cli.data / "ca").exists()


def test_the_commands_spell_the_settings_choices():
    """The command line spells the CA's choices itself (building it imports no settings model): the same ones."""
    from typing import get_args

    from scep_server.ca.authority import RA_MODES
    from scep_server.config import CASettings

    assert cli_module.RA_MODES == RA_MODES == get_args(CASettings.model_fields["ra_mode"].annotation)
    assert cli_module.KEY_TYPES == get_args(CASettings.model_fields["key_type"].annotation)
