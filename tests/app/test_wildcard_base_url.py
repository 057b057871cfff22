"""A wildcard listen address without server.base_url: the CA is served, nothing is issued (the certificates would
name http://0.0.0.0:...), unless the operator opts in; the loopback default issues and says what it names."""
from __future__ import annotations

import aiohttp
import pytest
from cryptography import x509
from structlog.testing import capture_logs

from scep_server.app import create_app
from scep_server.config import load_settings
from scep_server.profiles import ProfileSettings
from scep_server.runtime import initialise
from scep_server.scep import PKIStatus
from scep_server.serve import warn_wildcard_base_url
from tests.challenge.conftest import enrol
from tests.factories import rsa_key, settings_for
from tests.server import RunningServer


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", ":::8080", "0.0.0.0:0"])
def test_a_wildcard_listen_address_without_base_url_refuses_to_issue(listen):
    server = load_settings(None, server={"listen": listen}).server
    assert server.wildcard_base_url()
    refusal = server.issuing_refusal()
    assert refusal is not None and "server.base_url" in refusal and server.public_base_url() in refusal
    opted_in = load_settings(None, server={"listen": listen, "allow_wildcard_base_url": True}).server
    assert opted_in.wildcard_base_url() and opted_in.issuing_refusal() is None


@pytest.mark.parametrize("server", [{"listen": "127.0.0.1:8080"}, {"listen": "192.0.2.7:8080"},
                                    {"listen": "localhost:8080"},
                                    {"listen": "0.0.0.0:8080", "base_url": "https://scep.example.com"}])
def test_a_reachable_address_or_an_explicit_base_url_issues(server):
    settings = load_settings(None, server=server).server
    assert not settings.wildcard_base_url() and settings.issuing_refusal() is None


def test_the_opt_in_comes_from_the_environment_too(monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_SERVER__LISTEN", "0.0.0.0:8080")
    assert load_settings(None).server.issuing_refusal() is not None
    monkeypatch.setenv("SCEP_SERVER_SERVER__ALLOW_WILDCARD_BASE_URL", "true")
    assert load_settings(None).server.issuing_refusal() is None


async def _serve(aiohttp_server, tmp_path, **server) -> tuple[RunningServer, list[str]]:
    settings = settings_for(tmp_path / "data", server=server)
    report = await initialise(settings)
    app = create_app(settings)
    test_server = await aiohttp_server(app, host="127.0.0.1")
    return RunningServer(url=f"http://127.0.0.1:{test_server.port}", settings=settings, app=app), report


def _cdp_and_aia(der: bytes) -> tuple[str, str]:
    cert = x509.load_der_x509_certificate(der)
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    aia = [d.access_location.value for d in cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
           if d.access_method == x509.AuthorityInformationAccessOID.CA_ISSUERS]
    return cdp, aia[0]


def _issued(rep) -> bytes:
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    return rep.certs[0]


async def test_wildcard_serves_the_ca_but_answers_an_enrolment_with_a_failure_naming_the_setting(
        aiohttp_server, tmp_path):
    srv, report = await _serve(aiohttp_server, tmp_path, listen="0.0.0.0:8080")
    assert any("no certificate is issued" in line and "server.base_url" in line for line in report), report
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{srv.url}/scep/default?operation=GetCACaps") as resp:
            assert resp.status == 200 and "SCEPStandard" in await resp.text()
        async with session.get(f"{srv.url}/scep/default?operation=GetCACert") as resp:
            assert resp.status == 200 and len(await resp.read()) > 100
        with capture_logs():
            rep = await enrol(session, srv, "default", rsa_key(), srv.challenge(), cn="lab-1")
    assert rep.status is PKIStatus.FAILURE
    assert "server.base_url" in rep.fail_text and "0.0.0.0:8080" in rep.fail_text
    async with srv.runtime.engine.connect() as conn:
        import sqlalchemy as sa

        from scep_server.store.tables import certificates
        assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates))).scalar_one() == 0


async def test_wildcard_with_the_opt_in_issues_certificates_naming_the_wildcard(aiohttp_server, tmp_path):
    srv, report = await _serve(aiohttp_server, tmp_path, listen="0.0.0.0:8080", allow_wildcard_base_url=True)
    assert any("certificates will name http://0.0.0.0:8080" in line for line in report), report
    async with aiohttp.ClientSession() as session:
        with capture_logs():
            der = _issued(await enrol(session, srv, "default", rsa_key(), srv.challenge(), cn="lab-1"))
    assert _cdp_and_aia(der) == ("http://0.0.0.0:8080/crl/default.crl", "http://0.0.0.0:8080/ca/default.crt")


async def test_the_loopback_default_issues_and_its_first_start_says_what_certificates_name(aiohttp_server, tmp_path):
    srv, report = await _serve(aiohttp_server, tmp_path)
    notice = [line for line in report if "certificates will name" in line]
    assert len(notice) == 1, report
    assert "http://127.0.0.1:8080" in notice[0] and "server.base_url" in notice[0]
    assert "SCEP_SERVER_SERVER__BASE_URL" in notice[0]
    assert await initialise(srv.settings) == []  # said once, on the start that created the CA
    async with aiohttp.ClientSession() as session:
        with capture_logs():
            der = _issued(await enrol(session, srv, "default", rsa_key(), srv.challenge(), cn="dev-1"))
    assert _cdp_and_aia(der)[0] == "http://127.0.0.1:8080/crl/default.crl"


async def test_an_explicit_base_url_says_nothing_and_names_itself(aiohttp_server, tmp_path):
    srv, report = await _serve(aiohttp_server, tmp_path, listen="0.0.0.0:8080", base_url="https://scep.example.com/")
    assert not [line for line in report if "server.base_url" in line], report
    async with aiohttp.ClientSession() as session:
        with capture_logs():
            der = _issued(await enrol(session, srv, "default", rsa_key(), srv.challenge(), cn="dev-1"))
    assert _cdp_and_aia(der) == ("https://scep.example.com/crl/default.crl", "https://scep.example.com/ca/default.crt")


async def test_a_pending_enrolment_is_not_approved_while_issuing_is_refused(aiohttp_server, tmp_path):
    from trustkit.problems import Conflict

    srv, _ = await _serve(aiohttp_server, tmp_path, listen="0.0.0.0:8080", allow_wildcard_base_url=True)
    rt = srv.runtime
    await rt.profiles.create("manual", ca=next(iter(rt.cas)), challenge_kind="static", static_secret="s3cret",
                             now=rt.clock(), settings=ProfileSettings(require_approval=True))
    key = rsa_key()
    async with aiohttp.ClientSession() as session:
        with capture_logs():
            rep = await enrol(session, srv, "manual", key, "s3cret", cn="dev-1")
    assert rep.status is PKIStatus.PENDING
    rt.scep.refuse_issuing = load_settings(None, server={"listen": "0.0.0.0:8080"}).server.issuing_refusal()
    with pytest.raises(Conflict, match="server.base_url"):
        await rt.scep.decide("manual", rep.transaction_id, approve=True, actor="test")
    pending = await rt.scep.repository.find("manual", rep.transaction_id)
    assert pending["state"] == "pending"  # approved later, once the base URL is set
    rt.scep.refuse_issuing = None
    assert await rt.scep.decide("manual", rep.transaction_id, approve=True, actor="test")


@pytest.mark.parametrize("allow", [False, True])
def test_start_up_warns_naming_the_setting(allow):
    settings = load_settings(None, server={"listen": "0.0.0.0:8080", "allow_wildcard_base_url": allow})
    said: list[str] = []
    with capture_logs() as logs:
        warn_wildcard_base_url(settings, said.append)
    assert len(said) == 1 and "server.base_url" in said[0]
    assert ("issues no certificates" in said[0]) is not allow
    assert logs == [{"event": "server.base_url.wildcard", "log_level": "warning", "listen": "0.0.0.0:8080",
                     "issuing": allow}]


def test_no_warning_with_a_base_url_or_the_loopback_default():
    for server in ({"listen": "0.0.0.0:8080", "base_url": "https://scep.example.com"}, {}):
        said: list[str] = []
        with capture_logs() as logs:
            warn_wildcard_base_url(load_settings(None, server=server), said.append)
        assert said == [] and logs == []


def test_serve_warns_before_it_starts(monkeypatch):
    """`serve` itself says it (once, in the supervisor), before any worker runs."""
    from scep_server import serve as serve_module

    real_bind = serve_module.bind
    monkeypatch.setattr(serve_module, "bind", lambda host, port, **kw: real_bind("127.0.0.1", 0, **kw))  # nothing on 0.0.0.0
    started = []
    monkeypatch.setattr(serve_module, "_run_worker", lambda *args, **kwargs: started.append(kwargs))
    said: list[str] = []
    # without the console, whose plain-http warning on 0.0.0.0 is another test's (test_exposure_warnings)
    settings = load_settings(None, server={"listen": "0.0.0.0:8080"}, metrics={"enabled": False},
                             console={"enabled": False})
    with capture_logs() as logs:
        assert serve_module.serve(settings, announce=said.append) == 0
    assert "server.base_url" in said[0] and "issues no certificates" in said[0]
    assert said[1].startswith("listening on http://127.0.0.1:")
    assert [e["event"] for e in logs] == ["server.base_url.wildcard"]
    assert len(started) == 1 and callable(started[0]["ready"])


async def test_the_ra_certificate_made_behind_a_wildcard_names_no_unreachable_location(aiohttp_server, tmp_path):
    srv, _ = await _serve(aiohttp_server, tmp_path, listen="0.0.0.0:8080")
    ra_cert = srv.runtime.cas["default"].ra_cert
    for extension in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            ra_cert.extensions.get_extension_for_class(extension)
    # with a reachable base URL the RA certificate names its CRL and CA certificate as before
    other, _ = await _serve(aiohttp_server, tmp_path / "other", listen="0.0.0.0:8080",
                            base_url="https://scep.example.com")
    assert _cdp_and_aia(other.runtime.cas["default"].ra_cert_der) == (
        "https://scep.example.com/crl/default.crl", "https://scep.example.com/ca/default.crt")
