"""The command-line equivalents of the profiles and tokens admin API."""
from __future__ import annotations

import json
import re

from click.testing import CliRunner

from scep_server.clictx import cli_actor
from scep_server.cli import main


def _events(tmp_path, prefix: str) -> list[tuple[str, str, str]]:
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "scep.db") as db:
        return db.execute("SELECT kind, subject, actor FROM events WHERE kind LIKE ? ORDER BY id",
                          (prefix + "%",)).fetchall()


def test_token_create_list_disable(cli, tmp_path):
    out = cli("token", "create", "--scope", "admin", "--name", "ops", "--expires-in", "90d")
    token_id = re.search(r"^id: (\w+)$", out, re.M).group(1)
    assert re.search(r"^token: dt_admin_", out, re.M) and re.search(r"^expires: 20", out, re.M)
    cli("token", "create", "--scope", "signin", "--name", "sso", "--expires-at", "2099-01-31T00:00:00")
    listed = cli("token", "list")
    assert "dt_admin_" not in listed
    rows = [line.split("\t") for line in listed.splitlines()]
    assert [(r[0] == token_id, r[1], r[2], r[-1]) for r in rows] == [(True, "admin", "enabled", "ops"),
                                                                    (False, "signin", "enabled", "sso")]
    views = json.loads(cli("token", "list", "--format", "json"))
    assert views[1]["expires_at"] == "2099-01-31T00:00:00+00:00" and "token" not in views[1]

    runner = CliRunner()
    result = runner.invoke(main, ["--data-dir", str(tmp_path / "data"), "token", "list", "--limit", "1"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    assert "--cursor" in result.stderr

    assert cli("token", "disable", token_id).strip() == f"token {token_id} disabled"
    assert _events(tmp_path, "security.token") == [("security.token.create", token_id, cli_actor()),
                                                  ("security.token.create", rows[1][0], cli_actor()),
                                                  ("security.token.disable", token_id, cli_actor())]
    assert "already disabled" in cli("token", "disable", token_id)
    assert "\tdisabled\t" in cli("token", "list").splitlines()[0]
    assert "no API token" in cli("token", "disable", "nope", code=1)
    assert "in the future" in cli("token", "create", "--scope", "admin", "--expires-at", "2001-01-01T00:00:00Z",
                                  code=1)
    for bad in (["--expires-in", "0d"], ["--expires-in", "soon"], ["--expires-at", "tomorrow"],
                ["--expires-in", "1d", "--expires-at", "2099-01-01"]):
        cli("token", "create", "--scope", "admin", *bad, code=2)


def test_profile_update_rotate_delete(cli, tmp_path):
    out = cli("profile", "add", "kiosk")
    old = re.search(r"^challenge: (\S+)$", out, re.M).group(1)
    shown = json.loads(cli("profile", "update", "kiosk", "--settings-json",
                           '{"template": {"validity_days": 30}, "require_approval": true}'))
    assert shown["settings"]["template"]["validity_days"] == 30 and shown["settings"]["require_approval"] is True
    assert "settings.template.validity_days" in cli("profile", "update", "kiosk", "--settings-json",
                                                    '{"template": {"validity_days": 0}}', code=1)
    assert "settings.bogus" in cli("profile", "update", "kiosk", "--settings-json", '{"bogus": 1}', code=1)
    cli("profile", "update", "kiosk", "--settings-json", "{", code=2)
    assert "no SCEP profile" in cli("profile", "update", "nope", "--settings-json", "{}", code=1)

    new = re.search(r"^challenge: (\S+)$", cli("profile", "rotate-secret", "kiosk"), re.M).group(1)
    assert new != old
    assert "no SCEP profile" in cli("profile", "rotate-secret", "nope", code=1)

    cli("profile", "add", "a")
    cli("profile", "add", "b")
    assert [line.split("\t")[0] for line in cli("profile", "list", "--all", "--limit", "1").splitlines()] == \
        ["a", "b", "default", "kiosk"]

    assert "deleted" in cli("profile", "delete", "kiosk")
    assert "no SCEP profile" in cli("profile", "delete", "kiosk", code=1)
    assert "kiosk" not in cli("profile", "list")
    assert "deleted" in cli("profile", "delete", "a", "--force")
    assert [kind for kind, subject, actor in _events(tmp_path, "pki.profile") if subject == "kiosk"] == [
        "pki.profile.create", "pki.profile.update", "pki.profile.rotate_secret", "pki.profile.delete"]


def test_profile_add_takes_its_static_secret_from_a_file_kept_out_of_the_process_list(cli, tmp_path):
    """A secret the administrator chooses (the one an MDM profile already holds) need not be an argument, which
    every user of the host can read in the process list: --secret-file reads it, and it is not printed back."""
    import asyncio

    from scep_server.config import load_settings
    from scep_server.runtime import open_runtime

    chosen = tmp_path / "jamf-challenge"
    chosen.write_text("Correct-Horse-Battery-Staple-42\n")
    out = cli("profile", "add", "jamf", "--secret-file", str(chosen))
    assert "Correct-Horse" not in out and "challenge:" not in out

    async def check(secret):
        async with open_runtime(load_settings(None, data_dir=str(tmp_path / "data"))) as rt:
            return await rt.profiles.static_secret_ok("jamf", secret)

    assert asyncio.run(check("Correct-Horse-Battery-Staple-42")) is True
    assert asyncio.run(check("Correct-Horse-Battery-Staple-42\n")) is False
    assert "not both" in cli("profile", "add", "x", "--secret", "a", "--secret-file", str(chosen), code=2)
    assert "no static secret" in cli("profile", "add", "y", "--challenge", "dynamic", "--secret-file", str(chosen),
                                     code=2)
    (tmp_path / "empty").write_text("\n")
    assert "first line" in cli("profile", "add", "z", "--secret-file", str(tmp_path / "empty"), code=2)


def test_profile_add_refuses_unknown_settings(cli):
    assert "settings.bogus" in cli("profile", "add", "x", "--settings-json", '{"bogus": true}', code=1)
    cli("profile", "add", "x", "--settings-json", '{"template": {"validity_days": 5}}')
    assert json.loads(cli("profile", "show", "x"))["settings"]["template"]["validity_days"] == 5


def test_token_rotate(cli):
    out = cli("token", "create", "--scope", "admin", "--name", "ops")
    token_id = re.search(r"^id: (\w+)$", out, re.M).group(1)
    old = re.search(r"^token: (\S+)$", out, re.M).group(1)
    new = cli("token", "rotate", token_id).strip()
    assert new.startswith("dt_admin_") and new != old
    listed = [line.split("\t") for line in cli("token", "list").splitlines()]
    assert [(r[0], r[2], r[-1]) for r in listed] == [(token_id, "enabled", "ops")]  # the same token
    cli("token", "rotate", "nope", code=1)



def test_profile_rotate_secret_with_grace(cli, tmp_path):
    import asyncio

    from scep_server.profiles import ProfileStore
    from trustkit.db import create_engine

    old = (tmp_path / "data" / "default-challenge.txt").read_text().strip()
    new = cli("profile", "rotate-secret", "default", "--grace", "2h").split("challenge: ")[1].strip()
    cli("profile", "rotate-secret", "default", "--grace", "2x", code=2)
    cli("profile", "rotate-secret", "default", "--grace", "31d", code=1)

    async def ok(secret: str) -> bool:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'scep.db'}")
        try:
            return await ProfileStore(engine).static_secret_ok("default", secret)
        finally:
            await engine.dispose()
    assert asyncio.run(ok(old)) and asyncio.run(ok(new)) and not asyncio.run(ok("other"))


def test_a_secret_file_that_is_not_utf8_is_a_usage_error_not_a_traceback(cli, tmp_path):
    """A --secret-file holding bytes that are not UTF-8 (a binary file given by mistake) is refused with a usage
    error naming the option, as an empty one is."""
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00secret\n")
    assert "--secret-file" in cli("profile", "add", "z", "--secret-file", str(tmp_path / "binary"), code=2)
