"""Key statuses of the YubiKey report (Okta "YubiKey" page): imported, enrolled by a user, revoked.

Apart from otp.tables so that what only names them (the CLI's choices, the report's filters) needs no
SQLAlchemy.
"""
from __future__ import annotations

UNASSIGNED = "UNASSIGNED"
ACTIVE = "ACTIVE"
REVOKED = "REVOKED"
STATUSES = (UNASSIGNED, ACTIVE, REVOKED)
