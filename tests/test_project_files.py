"""The project's own files: the licence, the changelog, and the README's account of every dependency."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_every_runtime_dependency_has_a_row_saying_why():
    deps = [_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    rows = {}
    for line in _readme_section("Dependencies and why each is there").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("Package", "---"):
            rows[_name(cells[0]).lower()] = cells[1]
    missing = [d for d in deps if d.lower() not in rows]
    assert not missing, f"README's dependency table lacks {missing}"
    assert all(len(rows[d.lower()]) > 20 for d in deps), "each row says why"
    assert set(rows) <= {d.lower() for d in deps}, f"rows for packages that are not dependencies: {set(rows) - {d.lower() for d in deps}}"


def test_every_test_extra_and_debian_peer_is_accounted_for():
    section = _readme_section("Dependencies and why each is there")
    extras = [_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
              ["optional-dependencies"]["test"]]
    assert [e for e in extras if e not in section] == []
    peers = set()
    for match in re.finditer(r"need\+=\(([^)]*)\)", (ROOT / ".ci" / "install-peers").read_text()):
        peers |= set(match.group(1).split())
    assert peers and [p for p in peers if f"`{p}`" not in section and p not in section] == []


def test_the_readme_says_why_oscrypto_is_not_used():
    section = _readme_section("Dependencies and why each is there")
    assert re.search(r"oscrypto.*OpenSSL 3\.0\.10", section, re.DOTALL)
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "oscrypto" not in str(requirements).lower()


def test_the_licence_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_changelog_keeps_a_changelog():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "Keep a Changelog" in text
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings and headings[0] == "Unreleased"
    assert re.search(r"^### Added$", text, re.MULTILINE)
