"""The OTP feature's operator messages: structured events once logging is set up, stderr lines otherwise."""
from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from scep_server.otpwiring import service


def test_report_is_a_structured_event_once_logging_is_set_up_else_a_stderr_line(capsys):
    structlog.reset_defaults()
    service._report_kek_mismatch("boom", "k1")
    assert capsys.readouterr().err == "error: boom\n"
    with capture_logs() as logs:
        service._report_kek_mismatch("boom", "k1")
    assert logs == [{"event": "otp.kek.mismatch", "detail": "boom", "kek_id": "k1", "log_level": "error"}]
    assert capsys.readouterr().err == ""
    structlog.reset_defaults()


def test_kek_creation_is_announced_on_stderr_and_logged_once_logging_is_set_up(capsys, tmp_path):
    structlog.reset_defaults()
    service._announce_kek(tmp_path / "k")
    assert "created the OTP key-encryption key" in capsys.readouterr().err
    with capture_logs() as logs:
        service._announce_kek(tmp_path / "k")
    assert [entry["event"] for entry in logs] == ["otp.kek.created"]
    structlog.reset_defaults()
