"""What the console's pages know of a session (no storage here: the handlers may import it).

The CSRF token of a session is derived from its id (:func:`csrf_token`): bound to the session, known only
to whoever holds its cookie, and stored nowhere.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Session:
    digest: str
    token_id: str | None
    principal: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def csrf_token(session_id: str) -> str:
    """The CSRF token of a session: a value only the holder of the session id can know."""
    return hashlib.sha256(b"console-csrf\0" + session_id.encode()).hexdigest()


def csrf_matches(session_id: str, given: str | None) -> bool:
    return isinstance(given, str) and hmac.compare_digest(csrf_token(session_id).encode(), given.encode()[:128])
