"""The tables of every package in one MetaData: what the migrations of all branches must create.

Each package keeps its own ``MetaData`` (crl and otp never import the application); the combination
lives here, on the application side. The migration environment uses it as ``target_metadata`` and
tests/test_store_migrations.py compares it with a migrated database.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa


def package_metadata() -> Sequence[sa.MetaData]:
    """The MetaData of each package whose tables the migrations create (core, challenge, binding, crl, otp)."""
    import crl.tables
    import otp.tables

    from ..binding import tables as binding_tables
    from ..challenge import tables as challenge_tables
    from . import tables as core_tables

    return (core_tables.metadata, challenge_tables.metadata, binding_tables.metadata,
            crl.tables.metadata, otp.tables.metadata)


def combined_metadata() -> sa.MetaData:
    """A new MetaData holding a copy of every package's tables, so foreign keys across packages resolve."""
    combined = sa.MetaData()
    for md in package_metadata():
        for table in md.tables.values():
            if table.key in combined.tables:
                raise ValueError(f"table {table.key} is defined by two packages")
            table.to_metadata(combined)
    return combined
