"""Secrets-file parsing: every format of fixtures/otp, every kind of broken line, with line numbers."""
from __future__ import annotations

from pathlib import Path

import pytest

from otp.secrets_csv import (FORMAT_KSM, FORMAT_TRADITIONAL, FORMAT_YKMAN, FORMAT_YUBICO, TRADITIONAL_HELP,
                             parse_secrets)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "otp"


def parse(name: str):
    return parse_secrets((FIXTURES / name).read_bytes())


def errors(result) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in result.errors:
        out[e.line] = (out.get(e.line, "") + " | " + e.reason).strip(" |")
    return out


def test_fixtures_are_up_to_date():
    """The committed fixtures are exactly what make_secrets_fixtures.py writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_secrets_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, data in mod.FILES.items():
        assert (FIXTURES / name).read_bytes() == data, name


def test_yubico_format():
    r = parse("yubico-format.csv")
    assert r.ok and r.format == FORMAT_YUBICO
    assert [(x.line, x.serial, x.public_id) for x in r.records] == [
        (1, 12345678, "vvccccnrhbfu"), (2, 7886622, "ccccccijgibu"), (3, 12345680, "vvccccnrhbgc")]
    first = r.records[0]
    assert first.private_id.hex() == "609963eae7b5" and first.aes_key.hex() == "c68c9df8cbfe7d2f994cb904046c7218"
    assert r.records[2].access_code == bytes.fromhex("0f1e2d3c4b5a")
    assert "c68c9d" not in repr(first) and "609963" not in repr(first)  # secrets never in repr/logs


def test_ykman_format():
    r = parse("ykman-config-output.csv")
    assert r.ok and r.format == FORMAT_YKMAN
    assert [x.serial for x in r.records] == [12345679, 9000001]
    assert all(x.access_code is None for x in r.records)


def test_ksm_format_with_header_comments_and_crlf():
    r = parse("ykksm-provisioning.csv")
    assert r.ok and r.format == FORMAT_KSM
    assert [(x.line, x.serial, x.public_id) for x in r.records] == [(3, 4711, "dlcfffckrcde"), (4, 8, "interncccccc")]
    assert r.records[0].aes_key.hex() == "ecde18dbe76fbd0c33330f1c354871db"
    assert not r.warnings  # both public IDs have the standard 12 characters


def test_traditional_without_serial_is_refused_with_instructions():
    r = parse("traditional-log.csv")
    assert not r.ok and r.format == FORMAT_TRADITIONAL
    assert errors(r) == {2: TRADITIONAL_HELP, 3: TRADITIONAL_HELP}
    assert "Yubico format" in TRADITIONAL_HELP and "--serial-public-id" in TRADITIONAL_HELP
    assert [s.line for s in r.skipped] == [1]


def test_traditional_with_serial_public_ids_is_accepted():
    r = parse("traditional-serial-public-id.csv")
    assert r.ok and r.format == FORMAT_TRADITIONAL
    assert [(x.line, x.serial) for x in r.records] == [(2, 9000002), (4, 9000003)]
    assert {s.line for s in r.skipped} == {1, 3}
    assert any("OATH-HOTP" in s.reason for s in r.skipped)
    assert [w.line for w in r.warnings] == [2, 4]


def test_non_otp_rows_are_skipped_with_reasons():
    r = parse("mixed-configurations.csv")
    assert r.ok and [x.serial for x in r.records] == [7000001]
    reasons = {s.line: s.reason for s in r.skipped}
    assert "OATH-HOTP" in reasons[2] and "challenge-response" in reasons[3] and "static" in reasons[4]


def test_bom_crlf_blank_and_comment_lines_and_upper_case():
    r = parse("bom-crlf.csv")
    assert r.ok, r.errors
    assert [(x.line, x.serial, x.public_id) for x in r.records] == [(3, 12345681, "vvccccnrhbgb"),
                                                                   (5, 12345682, "vvccccnrhbgd")]
    assert r.records[0].aes_key.hex() == "6f708192a3b4c5d6e7f8091a2b3c4d5e"


def test_bad_lengths():
    e = errors(parse("bad-lengths.csv"))
    assert set(e) == {1, 2, 3, 4, 5, 6}
    assert "private ID must be 12 hex characters, got 10" in e[1]
    assert "AES key must be 32 hex characters, got 30" in e[2]
    assert "not ModHex" in e[3]
    assert "access code" in e[4]
    assert "longer than 16" in e[5]
    assert "at least 4" in e[6]


def test_bad_hex_and_modhex():
    e = errors(parse("bad-hex-modhex.csv"))
    assert "AES key contains characters that are not hex" in e[1]
    assert "not ModHex" in e[2]
    assert "private ID contains characters that are not hex" in e[3]
    assert "timestamp" in e[4]


def test_duplicates_within_the_file():
    r = parse("duplicates.csv")
    e = errors(r)
    assert e == {3: "duplicate serial 5200001 (also on line 1)", 4: "duplicate public ID ccccccfvgjjc (also on line 2)"}
    assert [(w.line, w.reason) for w in r.warnings] == [(5, "same AES key as line 1")]


def test_bad_line_in_the_middle_rejects_the_file():
    r = parse("bad-line-in-middle.csv")
    assert not r.ok
    assert list(errors(r)) == [3]
    assert len(r.records) == 4  # the good lines parse; the caller imports nothing because of line 3


def test_serial_problems():
    e = errors(parse("serial-problems.csv"))
    assert "serial is 0" in e[1]
    assert "'None'" in e[2]
    assert "missing" in e[3]
    assert "32 bits" in e[4]
    assert "encodes serial 5400006" in e[5]
    assert "not a decimal number" in e[6]


def test_aes256_keys_are_not_otp_keys():
    assert "AES-128" in errors(parse("aes256-key.csv"))[2]


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"# only a comment\n\n", b"\r\n\r\n"])
def test_empty_files(data):
    r = parse_secrets(data)
    assert not r.ok and [str(e) for e in r.errors] == ["no YubiKey OTP records found in the file"]


def test_non_utf8_file_is_still_read():
    data = "Yubico OTP,22.11.26 10:01,1,vvccccjkgffd,4c5d6e7f8091,2b3c4d5e6f708192a3b4c5d6e7f80911,,,0,0,0,0,0,0,0,0,0,0\n"
    r = parse_secrets(("LOGGING START,22.11.26 10:01 \u00e9\n" + data).encode("cp1252"))
    assert r.ok and r.records[0].serial == 9000002


def test_quoted_csv_fields():
    r = parse_secrets(b'"12345678","vvccccnrhbfu","609963eae7b5","c68c9df8cbfe7d2f994cb904046c7218","",\n')
    assert r.ok and r.records[0].serial == 12345678


def test_public_id_length_warning():
    r = parse_secrets(b"4711,dlcfffck,ca62baca62ba,ecde18dbe76fbd0c33330f1c354871db,,\n")
    assert r.ok and "not the standard 12" in r.warnings[0].reason


@pytest.mark.parametrize("stamp, ok", [
    ("2026-11-22T10:01:00", True), ("2026-11-22t10:01:00", True), ("2026-11-22 10:01:00", True),
    ("2026-11-22T10:01:00.123456", True), ("", True),
    ("2026-02-30T10:01:00", False), ("2026-11-22T24:01:00", False), ("2026-11-22T10:01", False),
    ("2026-11-22", False), ("2026-11-22T10:01:00+01:00", False), ("22.11.26 10:01", False),
    ("2026-11-22 10:01:00.5", False),
], ids=lambda v: repr(v) if isinstance(v, str) else str(v))
def test_timestamp_field(stamp, ok):
    parsed = parse_secrets(f"12345678,vvccccnrhbfu,609963eae7b5,c68c9df8cbfe7d2f994cb904046c7218,,{stamp},\n".encode())
    assert (not parsed.errors) is ok, parsed.errors
    if not ok:
        assert parsed.errors[0].reason.startswith("timestamp") and not parsed.records


def test_quoted_fields_still_parse():
    line = '"12345678","vvccccnrhbfu","609963eae7b5","c68c9df8cbfe7d2f994cb904046c7218","","2026-11-22T10:06:46",\n'
    parsed = parse_secrets(line.encode())
    assert not parsed.errors and parsed.records[0].serial == 12345678
    broken = parse_secrets(b'12345678,"vvccccnrhbfu\n')
    assert broken.errors and not broken.records


def test_a_file_of_bad_lines_keeps_the_first_issues_and_counts_them_all():
    """128 KiB of one-character lines (tracemalloc makes parsing slow): 64 Ki errors are counted, the first
    1,000 by line kept, and parsing holds memory bounded by the file, not by the number of bad lines (before the
    cap, 126 times the file)."""
    import tracemalloc

    data = b"x\n" * (64 * 1024)
    tracemalloc.start()
    try:
        result = parse_secrets(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(data), peak
    assert result.errors_total == 64 * 1024 and len(result.errors) == 1000
    assert [e.line for e in result.errors] == list(range(1, 1001))
    assert not result.ok and result.records == ()


def test_kept_issues_are_the_first_by_line_whenever_they_were_found():
    """Duplicates are found after every line was read: the kept errors are still the first lines'."""
    from tests.otp.conftest import make_key, secrets_file

    key = make_key(4_000_001)
    data = secrets_file([key]) * 2 + b"x\n" * 2000
    result = parse_secrets(data)
    assert result.errors_total == 2002  # line 2 repeats both the serial and the public ID
    assert [e.line for e in result.errors[:3]] == [2, 2, 3] and len(result.errors) == 1000
