"""`serve` says at start what is open beyond this host without protection: /metrics without a token, the admin
console over plain http. Nothing was said; an operator found out from a scan."""
from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from scep_server.config import load_settings
from scep_server.serve import warn_exposed


def _warnings(**overrides) -> tuple[list[str], list[dict]]:
    said: list[str] = []
    with capture_logs() as logs:
        warn_exposed(load_settings(None, **overrides), said.append)
    return said, [entry for entry in logs if entry["event"].startswith("server.")]


@pytest.mark.parametrize("server, metrics", [
    ({"listen": "0.0.0.0:8080", "base_url": "https://pki.example.com"}, {}),
    ({"listen": "10.1.2.3:8080", "base_url": "https://pki.example.com"}, {}),
    ({"listen": "127.0.0.1:8080"}, {"listen": "0.0.0.0:9100"}),
])
def test_metrics_without_a_token_beyond_loopback_are_named(server, metrics):
    said, logged = _warnings(server=server, metrics=metrics)
    listen = metrics.get("listen", server["listen"])
    assert [(e["event"], e["listen"]) for e in logged] == [("server.metrics.open", listen)]
    assert len(said) == 1 and f"/metrics answers whoever reaches {listen}" in said[0]


def test_the_console_over_plain_http_beyond_loopback_is_named():
    said, logged = _warnings(server={"listen": "0.0.0.0:8080", "base_url": "http://pki.example.com"},
                             metrics={"token_env": "METRICS_TOKEN"})
    assert [(e["event"], e["listen"], e["base_url"]) for e in logged] == [
        ("server.console.plain_http", "0.0.0.0:8080", "http://pki.example.com")]
    assert len(said) == 1 and "takes administrator tokens over plain http" in said[0]


@pytest.mark.parametrize("overrides", [
    {},  # the default: loopback
    {"server": {"listen": "localhost:8080"}},
    {"server": {"listen": "[::1]:8080"}},
    {"server": {"listen": "0.0.0.0:8080", "base_url": "https://pki.example.com"}, "metrics": {"token_file": "/t"}},
    {"server": {"listen": "0.0.0.0:8080", "base_url": "http://pki.example.com"}, "metrics": {"enabled": False},
     "console": {"enabled": False}},
    {"server": {"listen": "0.0.0.0:8080", "base_url": "https://pki.example.com"},
     "metrics": {"listen": "127.0.0.1:9100"}},
    # docs/deployment.md: instances behind a TLS proxy they trust, base_url the plain-http address certificates
    # name (CRLs, AIA and OCSP are fetched over http); the console is reached through the proxy's https
    {"server": {"listen": "0.0.0.0:8080", "base_url": "http://pki.example.com", "trusted_proxies": ["10.0.0.0/8"]},
     "metrics": {"token_env": "METRICS_TOKEN"}},
])
def test_nothing_is_said_of_what_is_protected_or_local(overrides):
    assert _warnings(**overrides) == ([], [])
