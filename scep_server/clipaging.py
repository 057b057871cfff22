"""Paged lists on the command line: `trustkit.clipaging` (docs/api.md "Pagination"), where otp's commands
find it too."""
from __future__ import annotations

from trustkit.clipaging import DEFAULT_LIMIT, MAX_PAGES, collect, paging_options, say_more

__all__ = ["DEFAULT_LIMIT", "MAX_PAGES", "collect", "paging_options", "say_more"]
