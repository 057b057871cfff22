"""The CAs of a deployment by name, read from its CA directory (no private key is read)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings


def ca_names(settings: Settings) -> list[str]:
    """The CAs of this deployment, the issuing one first (after a CA rollover's activation, the one named in
    ``ca/active``; the earlier ones still publish their CRLs), from their certificates only (no private key
    is read)."""
    directory = settings.ca_dir()
    if not (directory / "ca.crt").exists():
        raise FileNotFoundError(f"no CA in {directory}: run `scep-server init` first")
    root = directory.parent
    active_file = root / "active"
    active = active_file.read_text().strip() if active_file.exists() else settings.ca.name
    others = sorted(p.name for p in root.iterdir() if p.name != active and (p / "ca.crt").is_file())
    return [active, *others]
