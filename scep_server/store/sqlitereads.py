"""Reads of the embedded SQLite database over the standard library's sqlite3, for the listing commands.

A command that only lists (`profile list`, `cert list`) spends most of its time importing SQLAlchemy; on the
embedded default (SQLite in the data directory) it reads through :class:`SqliteReads` instead, which offers
the same read methods as the stores the runtime opens (``profiles.page``, ``certificates.list``) and returns
the same objects: the rows go through the model's own constructors (:func:`scep_server.profilemodel.
profile_from_row`, :func:`scep_server.ca.records.record_from_row`), the statements are the ones SQLAlchemy
sends for the stores' queries, and time values are bound as SQLAlchemy's SQLite dialect stores them.
tests/app/test_sqlitereads.py runs both on the same databases, so the two cannot drift apart.

:func:`open_reads` decides: a SQLite database given by a plain file URL that exists, an initialised data
directory, and no audit chain (a command that opens the runtime seals the chain's backlog on exit, which a
reader must not skip). Anything else (PostgreSQL, an in-memory or URL-parameterised SQLite database, a
missing file) returns None and the command opens the runtime as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustkit.paging import Page, PageRequest, take
from trustkit.sqlitereads import Reader, after, parse_times, sqlite_path, time_ranges

if TYPE_CHECKING:
    import sqlite3

    from ..ca.records import CertFilter, CertRecord
    from ..config import Settings
    from ..profilemodel import Profile


class ProfileReads:
    """The reads of :class:`scep_server.profiles.ProfileStore` a listing command uses."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def page(self, request: PageRequest) -> Page["Profile"]:
        """One page of the profiles, by name."""
        from ..profilemodel import profile_from_row

        where, params = after(("name",), request.after)
        rows = self._conn.execute(f"SELECT * FROM profiles WHERE {where} ORDER BY name ASC LIMIT ?",
                                  [*params, request.limit + 1]).fetchall()
        return take([profile_from_row(r) for r in rows], request.limit, lambda p: (p.name,))


CERT_TIMES = ("not_before", "not_after", "revoked_at", "invalidity_date", "issued_at", "first_used_at",
              "unused_since")


class CertificateReads:
    """The list of :class:`scep_server.ca.queries.CertificateQueries` (``cert list``)."""

    def __init__(self, conn: sqlite3.Connection, *, device_links: bool) -> None:
        self._conn = conn
        self._device_links = device_links  # the binding capability is on: its bindings name devices too

    def conditions(self, f: "CertFilter") -> tuple[list[str], list[Any]]:
        """CertificateQueries.conditions, as SQL text and parameters."""
        where: list[str] = []
        params: list[Any] = []
        if f.device is not None:
            serials = "SELECT enrolled.serial FROM certificates AS enrolled WHERE enrolled.enrolled_device_id = ?"
            params.append(f.device)
            if self._device_links:
                serials += " UNION SELECT device_certs.serial FROM device_certs WHERE device_certs.device_id = ? " \
                           "AND NOT device_certs.external"
                params.append(f.device)
            where.append(f"serial IN ({serials})")
        ranges, bound = time_ranges((("issued_at", f.issued_after, f.issued_before),
                                     ("not_after", f.expires_after, f.expires_before)))
        where += ranges
        params += bound
        if f.serial_prefix is not None:
            where += ["serial >= ?", "serial < ?", "serial LIKE ?"]
            params += [f.serial_prefix, f.serial_prefix + "g", f.serial_prefix + "%"]
        return where, params

    async def list(self, page: PageRequest, f: "CertFilter | None" = None) -> Page["CertRecord"]:
        """One page of the certificates `f` selects, newest first (scep_server.ca.inventory.list_certs)."""
        from ..ca.records import CertFilter, record_from_row

        f = f or CertFilter()
        key_where, params = after(("issued_at", "serial"), page.after, descending=True)
        where, more = self.conditions(f)
        where, params = [key_where, *where], [*params, *more]
        if f.status:
            where.append("status = ?")
            params.append(f.status.value)
        if f.profile:
            where.append("profile = ?")
            params.append(f.profile)
        sql = (f"SELECT * FROM certificates WHERE {' AND '.join(where)} "
               "ORDER BY issued_at DESC, serial DESC LIMIT ?")
        rows = [record_from_row(parse_times(r, CERT_TIMES)) for r in self._conn.execute(sql, [*params, page.limit + 1])]
        return take(rows, page.limit, key=lambda r: (r.issued_at, r.serial))


class SqliteReads(Reader):
    """One sqlite3 connection (autocommit, as the engines' connections) and the stores' reads over it."""

    def __init__(self, path: Path, *, device_links: bool) -> None:
        super().__init__(path)
        self.profiles = ProfileReads(self._conn)
        self.certificates = CertificateReads(self._conn, device_links=device_links)


def reads_path(settings: "Settings") -> Path | None:
    """The database file a command of this deployment may read through sqlite3, or None where the runtime's
    stores must read (see the module's docstring)."""
    if settings.audit.chain or not (settings.ca_dir() / "ca.crt").exists():
        return None  # the runtime seals on exit / names the missing CA as every command does
    path = sqlite_path(settings.database_url())
    if path is None or not path.is_file():
        return None
    return path


def open_reads(settings: "Settings") -> SqliteReads | None:
    """The sqlite3 reader of this deployment's database, or None where the runtime's stores must read."""
    path = reads_path(settings)
    return None if path is None else SqliteReads(path, device_links=bool(getattr(settings.binding, "enabled", True)))
