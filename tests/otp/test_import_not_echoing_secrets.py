"""A secrets file with its columns out of order is refused without echoing the private IDs, AES keys or access
codes that landed in the serial, public ID or timestamp columns: not in the parser's issues, the API's 422
problem document, nor the command line's output (the console page: tests/console). SQLite and PostgreSQL."""
from __future__ import annotations

import json

from otp.secrets_csv import parse_secrets
from tests.otp.shifted_secrets import assert_no_secret_in, shifted_file
from tests.otp.test_cli import Cli, ca_template, cli  # noqa: F401 - the command line's fixtures
from tests.otp.test_web import ADMIN, api  # noqa: F401 - the API's fixture


def test_the_issues_describe_the_fields_without_their_values():
    data, found = shifted_file()
    parsed = parse_secrets(data)
    assert not parsed.records and parsed.errors_total >= 5
    issues = [i.reason for i in parsed.errors + parsed.warnings + parsed.skipped]
    assert_no_secret_in("\n".join(issues), found)
    by_line: dict[int, str] = {}
    for i in parsed.errors:
        by_line[i.line] = by_line.get(i.line, "") + i.reason + "\n"
    assert "serial (field 1) is not a decimal number" in by_line[1] and "12 hex digits" in by_line[1]
    assert "public ID (field 2) is not ModHex" in by_line[1] and "32 hex digits" in by_line[1]
    assert "the shape of an AES key" in by_line[1]
    assert "timestamp (field 6)" in by_line[3] and "the shape of a private ID or an access code" in by_line[3]
    assert "larger than a YubiKey serial" in by_line[4] and "12 decimal digits" in by_line[4]
    assert [i.line for i in parsed.skipped] == [6]


async def test_the_apis_422_names_no_secret(api):  # noqa: F811
    data, found = shifted_file()
    for query in ("?dry_run=1", ""):
        resp = await api.post("/api/v1/yubikeys/import" + query, data=data, headers=ADMIN)
        text = await resp.text()
        assert resp.status == 422 and json.loads(text)["code"] == "import_rejected"
        assert_no_secret_in(text, found)


def test_the_command_line_prints_no_secret(cli, tmp_path):  # noqa: F811
    data, found = shifted_file()
    path = tmp_path / "shifted.csv"
    path.write_bytes(data)
    for dry in (("--dry-run",), ()):
        r = cli("yubikey", "import", *dry, str(path))
        assert r.exit_code == 1 and "error: line 1: serial" in r.stderr
        assert_no_secret_in(r.stdout + r.stderr, found)
        assert "error: line 1: serial (field 1) is not a decimal number" in r.stderr
