"""The YubiKey report read over the standard library's sqlite3, for `yubikey report` on a SQLite database.

The command spends most of its time importing SQLAlchemy; where the application says the database may be read
directly (a SQLite file, see ``build_cli``'s ``open_reads``) it reads through :class:`OtpReads`, which offers
the service's ``report_page`` and returns the same rows: the statements are the ones SQLAlchemy sends for
:meth:`otp.store.OtpStore.report_rows` and :meth:`~otp.store.OtpStore.history` with the conditions of
``OtpService._where``, and the rows become report rows through the service's own :func:`otp.report.key_reports`.
tests/otp/test_sqlitereads.py runs both on the same databases, so the two cannot drift apart.
"""
from __future__ import annotations

import json
from typing import Any

from trustkit.clock import aware
from trustkit.paging import Page, PageRequest, take
from trustkit.sqlitereads import Reader, after, parse_times, time_ranges

from .report import KeyReport, ReportFilter, key_reports

KEY_TIMES = ("imported_at", "enrolled_at", "revoked_at", "deleted_at", "last_used_at", "blocked_until")
HISTORY_CHUNK = 5000  # key ids per statement, as the store's


def conditions(flt: ReportFilter) -> tuple[list[str], list[Any]]:
    """``OtpService._where`` as SQL text and parameters."""
    where: list[str] = []
    params: list[Any] = []
    if flt.status:
        where.append("k.status = ?")
        params.append(flt.status)
    if flt.serial is not None:
        where.append("k.serial = ?")
        params.append(flt.serial)
    if flt.user:
        where.append("(k.user_name = ? OR k.last_user = ?)")
        params += [flt.user, flt.user]
    if flt.public_id:
        where.append("k.public_id = ?")
        params.append(flt.public_id)
    ranges, bound = time_ranges((("k.imported_at", flt.imported_after, flt.imported_before),
                                 ("k.enrolled_at", flt.enrolled_after, flt.enrolled_before),
                                 ("k.last_used_at", flt.last_used_after, flt.last_used_before)))
    where += ranges
    params += bound
    if not flt.include_deleted:
        where.append("k.deleted_at IS NULL")
    return where, params


class OtpReads(Reader):
    """One sqlite3 connection and the report's reads over it."""

    def sealed_count(self) -> int:
        """How many live keys and active clients hold secrets sealed under some KEK (scep_server.otpwiring's
        ``_sealed_keys``; 0 if the schema is missing)."""
        import sqlite3

        try:
            keys = self._conn.execute("SELECT count(*) AS n FROM otp_yubikeys WHERE deleted_at IS NULL").fetchone()
            clients = self._conn.execute("SELECT count(*) AS n FROM otp_clients WHERE disabled_at IS NULL").fetchone()
        except sqlite3.Error:
            return 0
        return keys["n"] + clients["n"]

    async def report_page(self, flt: ReportFilter, page: PageRequest, *,
                          with_history: bool = True) -> Page[KeyReport]:
        """One page of the report (``OtpService.report_page``)."""
        key_where, params = after(("k.serial", "k.id"), page.after)
        where, more = conditions(flt)
        sql = ("SELECT k.id, k.serial, k.public_id, k.status, k.user_name, k.last_user, k.imported_at, "
               "k.enrolled_at, k.revoked_at, k.deleted_at, k.last_used_at, k.usage_ctr, k.session_use, "
               "k.blocked_until, k.import_id, i.format, i.actor "
               "FROM otp_yubikeys AS k JOIN otp_imports AS i ON i.id = k.import_id "
               f"WHERE {' AND '.join([*where, key_where])} ORDER BY k.serial ASC, k.id ASC LIMIT ?")
        rows = []
        for r in self._conn.execute(sql, [*more, *params, page.limit + 1]):
            parse_times(r, KEY_TIMES)
            rows.append({**r, **{c: aware(r[c]) for c in KEY_TIMES}})
        history = self._history([r["id"] for r in rows]) if with_history else None
        return take(key_reports(rows, history), page.limit, key=lambda r: (r.serial, r.key_id))

    def _history(self, key_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in key_ids}
        for i in range(0, len(key_ids), HISTORY_CHUNK):
            part = key_ids[i:i + HISTORY_CHUNK]
            sql = ("SELECT key_id, at, kind, user_name, actor, client_id, source, detail, occurrences FROM otp_events "
                   f"WHERE key_id IN ({', '.join('?' * len(part))}) ORDER BY id")
            for r in self._conn.execute(sql, part):
                parse_times(r, ("at",))
                out[r["key_id"]].append({"at": aware(r["at"]), "event": r["kind"], "user": r["user_name"],
                                         "actor": r["actor"], "client_id": r["client_id"], "source": r["source"],
                                         "detail": json.loads(r["detail"] or "{}"), "occurrences": r["occurrences"]})
        return out
