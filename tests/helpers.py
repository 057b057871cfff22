"""Test helpers: finding the real clients the interop tests drive."""
from __future__ import annotations

import os
import shutil

import pytest

ALLOW_MISSING = os.environ.get("SCEP_TEST_ALLOW_MISSING") == "1"


def missing(reason: str):
    """A required real peer is absent: fail (the default, and always in CI) or skip when allowed."""
    if ALLOW_MISSING and os.environ.get("CI") != "true":
        pytest.skip(reason)
    pytest.fail(reason + " (install it with .ci/install-peers, or set SCEP_TEST_ALLOW_MISSING=1 to skip locally)", pytrace=False)


def require_tool(path_or_name: str) -> str:
    """The absolute path of a required external program, or fail the test."""
    found = path_or_name if os.path.isabs(path_or_name) and os.access(path_or_name, os.X_OK) else shutil.which(path_or_name)
    if not found:
        missing(f"required program {path_or_name!r} is not installed")
    return found
