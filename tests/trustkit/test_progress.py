"""trustkit.progress: one bar per stage on a terminal, nothing (progress is None) otherwise."""
from __future__ import annotations

import io
import sys

from trustkit import progress as progress_mod
from trustkit.progress import report, stage_bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_no_progress(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with stage_bars({"a": "stage a"}) as progress:
        assert progress is None
        report(progress, "a", 1, 2)  # a no-op without a progress
    assert sys.stderr.getvalue() == ""


def test_a_closed_or_odd_stderr_is_not_a_terminal(monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    assert not progress_mod.stderr_is_terminal()
    monkeypatch.setattr(sys, "stderr", None)
    assert not progress_mod.stderr_is_terminal()


def test_a_terminal_gets_a_bar_per_stage_finished_in_turn(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with stage_bars({"read": "reading", "write": "writing keys"}) as progress:
        assert progress is not None
        for done in (10, 20, 30):
            progress("read", done, 30)
        progress("write", 5, 10)
        progress("write", 5, 10)  # no step back, no double count
        progress("write", 12, 10)  # never past the total
    text = terminal.getvalue()
    assert "reading     " in text and "30/30" in text  # labels padded to the longest
    assert "writing keys" in text and "10/10" in text and "12/10" not in text
    assert text.index("30/30") < text.index("writing keys")
    assert text.endswith("\n")  # the last bar is finished when the block ends


def test_an_empty_stage_is_one_bar_complete_when_done(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with stage_bars({"sign": "signing"}) as progress:
        progress("sign", 0, 0)
        progress("sign", 0, 0)
    text = terminal.getvalue()
    assert text.count("signing") == 2 and "1/1" in text  # one bar: drawn at 0/1, then complete
