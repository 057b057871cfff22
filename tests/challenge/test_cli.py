"""`scep-server challenge configure|new|status` and the profile settings they write."""
from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing


from scep_server.challenge.basic import check_password


def _stored_challenge(tmp_path, profile: str) -> dict:
    with closing(sqlite3.connect(tmp_path / "data" / "scep.db")) as db:
        (settings,) = db.execute("SELECT settings FROM profiles WHERE name = ?", (profile,)).fetchone()
    return json.loads(settings)["challenge"]


def test_a_basic_password_given_in_a_file_stays_out_of_the_process_list(cli, tmp_path):
    """The page's Basic password an MDM already holds (Jamf's webhook credentials) is read from a file or standard
    input, not from an argument every user of the host sees in the process list; it is not printed back."""
    cli("profile", "add", "jamf", "--challenge", "dynamic")
    chosen = tmp_path / "jamf-basic"
    chosen.write_text("Jamf-Webhook-Password-7\n")
    out = cli("challenge", "configure", "jamf", "--username", "jamf-api", "--password-file", str(chosen))
    assert "Jamf-Webhook" not in out and "password:" not in out
    stored = _stored_challenge(tmp_path, "jamf")
    assert check_password("Jamf-Webhook-Password-7", stored["credentials"]["password_hash"])
    assert "not both" in cli("challenge", "configure", "jamf", "--password", "x", "--password-file", str(chosen),
                             code=2)
    cli("profile", "add", "hook", "--challenge", "delegated")
    assert "do not apply to a delegated" in cli("challenge", "configure", "hook", "--password-file", str(chosen),
                                                code=2)


def test_dynamic_profile_configuration(cli, tmp_path):
    cli("profile", "add", "jamf", "--challenge", "dynamic")
    out = cli("challenge", "configure", "jamf", "--username", "jamf-api")
    password = re.search(r"password: (\S+)", out).group(1)
    cli("challenge", "configure", "jamf", "--ttl-minutes", "30", "--max-unused", "2", "--page-encoding", "utf-16le")
    stored = _stored_challenge(tmp_path, "jamf")
    assert check_password(password, stored["credentials"]["password_hash"])
    # the password's hash is shown as the API shows it, as "(set)" (`profile show` says: no secrets)
    for shown in (cli("profile", "show", "jamf"), cli("profile", "update", "jamf", "--settings-json", "{}")):
        ch = json.loads(shown)["settings"]["challenge"]
        assert ch["ttl_minutes"] == 30 and ch["max_unused"] == 2 and ch["page_encoding"] == "utf-16le"
        assert ch["credentials"] == {"username": "jamf-api", "password_hash": "(set)"}
        assert password not in shown and stored["credentials"]["password_hash"] not in shown

    first = json.loads(cli("challenge", "new", "jamf", "--json"))
    assert re.fullmatch(r"[0-9A-F]{40}", first["challenge"])
    assert re.fullmatch(r"[0-9A-F]{40}\n", cli("challenge", "new", "jamf", "--subject", "CN=dev1",
                                                "--san", "dns:dev1.example"))
    assert "already has 2 unused" in cli("challenge", "new", "jamf", code=1)
    assert json.loads(cli("challenge", "status", "jamf")) == {"expired": 0, "unused": 2, "used": 0}
    cli("challenge", "configure", "jamf", "--max-unused", "0")
    cli("challenge", "new", "jamf")

    assert "bad" in cli("challenge", "new", "jamf", "--san", "bad", code=2).lower()
    assert "does not use dynamic" in cli("challenge", "new", "default", code=1)
    assert "nothing to configure" in cli("challenge", "configure", "default", "--username", "x", code=1)
    assert "do not apply to a dynamic" in cli("challenge", "configure", "jamf", "--webhook-url", "http://x", code=2)


def test_delegated_profile_configuration(cli, tmp_path):
    cli("profile", "add", "intune", "--challenge", "delegated")
    assert "provider" in cli("challenge", "configure", "intune", "--intune-tenant", "t", code=1)
    cli("challenge", "configure", "intune", "--provider", "intune", "--intune-tenant", "contoso.onmicrosoft.com",
        "--intune-client-id", "abc", "--intune-secret-env", "INTUNE_SECRET", "--timeout", "5", "--retries", "1")
    ch = json.loads(cli("profile", "show", "intune"))["settings"]["challenge"]
    assert ch == {"provider": "intune", "intune": {"tenant": "contoso.onmicrosoft.com", "client_id": "abc",
                                                   "client_secret": {"env": "INTUNE_SECRET", "file": None},
                                                   "timeout_seconds": 5.0, "retries": 1}}
    cli("profile", "add", "hook", "--challenge", "delegated")
    assert "exactly one" in cli("challenge", "configure", "hook", "--provider", "webhook", "--webhook-url",
                                "https://hooks.example/scep", "--webhook-secret-env", "A",
                                "--webhook-secret-file", "/x", code=1)
    cli("challenge", "configure", "hook", "--provider", "webhook", "--webhook-url", "https://hooks.example/scep",
        "--webhook-secret-file", str(tmp_path / "s"), "--webhook-require-ack")
    ch = json.loads(cli("profile", "show", "hook"))["settings"]["challenge"]
    assert ch["webhook"]["require_success_ack"] is True and ch["webhook"]["url"] == "https://hooks.example/scep"
    assert "do not apply to a delegated" in cli("challenge", "configure", "hook", "--username", "u", code=2)


def test_the_challenge_and_template_commands_are_audit_events(cli):
    cli("profile", "add", "jamf", "--challenge", "dynamic")
    cli("challenge", "configure", "jamf", "--username", "jamf-api")
    cli("profile", "set-template", "jamf", '{"validity_days": 30}')
    events = json.loads(cli("audit", "list", "--format", "json", "--subject", "jamf", "--kind", "pki.profile.*"))
    kinds = [(e["kind"], e["actor"].startswith("cli:")) for e in events]
    assert kinds.count(("pki.profile.update", True)) == 2, kinds
