"""Command-line lists page (docs/api.md "Pagination"): a page and a word on stderr when more rows exist,
every row once by following the cursors or with --all, and a bad cursor is a usage error."""
from __future__ import annotations

import asyncio
import re
from datetime import timedelta

from click.testing import CliRunner

from scep_server.cli import main
from tests.factories import csr, record_issued, rsa_key, settings_for


def _issue(tmp_path, count: int) -> list[str]:
    from scep_server.ca.authority import random_serial
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import load_cas
    from trustkit.clock import utcnow
    from trustkit.db import create_engine

    settings = settings_for(tmp_path / "data")
    [ca] = load_cas(settings).values()
    key = rsa_key()
    now = utcnow()

    async def record():
        engine = create_engine(settings.database_url())
        try:
            serials = []
            for i in range(count):  # two certificates share each issue time: the serial breaks the tie
                cert = ca.issue(csr(key), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=now)
                serials.append(await record_issued(engine, ca, cert, issued_at=now + timedelta(seconds=i // 2)))
            return serials
        finally:
            await engine.dispose()

    return asyncio.run(record())


def test_cert_list_pages_and_never_cuts_silently(cli, tmp_path):
    serials = _issue(tmp_path, 5)
    runner = CliRunner()

    def listing(*args, code=0):
        result = runner.invoke(main, ["--data-dir", str(tmp_path / "data"), "cert", "list", *args])
        assert result.exit_code == code, (result.output, result.exception)
        return [line.split("\t")[0] for line in result.stdout.splitlines()], result.stderr

    everything, note = listing("--all", "--limit", "2")
    assert sorted(everything) == sorted(serials) and note == ""
    first, note = listing()
    assert first == everything  # fewer rows than a page: no note
    seen, cursor, pages = [], None, 0
    while pages < 10:
        rows, note = listing("--limit", "2", *(["--cursor", cursor] if cursor else []))
        seen += rows
        pages += 1
        found = re.search(r"more with --cursor (\S+)", note)
        if found is None:
            break
        assert note.startswith(f"{len(rows)} rows shown")
        cursor = found.group(1)
    assert pages == 3 and seen == everything
    _, note = listing("--cursor", "not-a-cursor", code=2)
    assert "not a cursor of this list" in note
