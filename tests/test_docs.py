"""Every document the code, the README and the documents themselves cite exists in the repository, with the
heading cited.

Forms: `docs/x.md`, `docs/x.md#anchor`, `docs/x.md: Heading`, `docs/x.md "Heading"` (and
`docs/x.md "Heading", "Other heading"`). A citation that names no file ("docs: ...") is refused.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("scep_server", "crl", "otp", "bench", "docs", "README.md")

_PATH = r"docs/[\w-]+(?:/[\w-]+)*\.md"
CITATION = re.compile(rf"({_PATH})(?:#([\w-]+)|:[ \t]+([^\s\"();,.][^\n\"();,]*)|((?:,?[ \t]+\"[^\"\n]+\")+))?")
QUOTED = re.compile(r"\"([^\"\n]+)\"")
FILELESS = re.compile(r"\bdocs:")


def _sources(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = root / name
        if path.is_file():
            files.append(path)
        else:
            files.extend(p for p in sorted(path.rglob("*")) if p.suffix in (".py", ".md", ".toml") and p.is_file())
    return files


def _slug(heading: str) -> str:
    """A Markdown heading's anchor as GitHub spells it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(doc: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6}[ \t]+(.+)$", doc.read_text(), re.MULTILINE)}


def citations(root: Path = ROOT) -> list[tuple[str, str, str | None, str | None]]:
    """(where, path, heading, anchor) for every citation in the scanned sources."""
    found = []
    for src in _sources(root):
        text = src.read_text(errors="replace")
        for m in CITATION.finditer(text):
            where = f"{src.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}"
            path, anchor, colon, quoted = m.groups()
            if quoted:
                found.extend((where, path, h, None) for h in QUOTED.findall(quoted))
            elif colon:
                found.append((where, path, colon.strip().rstrip("."), None))  # a sentence may end after it
            else:
                found.append((where, path, None, anchor))
    return found


def problems(root: Path = ROOT) -> list[str]:
    out = []
    for src in _sources(root):
        text = src.read_text(errors="replace")
        for m in FILELESS.finditer(text):
            out.append(f"{src.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}: cites docs without a file")
    for where, path, heading, anchor in citations(root):
        doc = root / path
        if not doc.is_file():
            out.append(f"{where}: {path} does not exist")
            continue
        headings = _headings(doc)
        if heading is not None and heading not in headings:
            out.append(f"{where}: {path} has no heading {heading!r}")
        if anchor is not None and anchor not in {_slug(h) for h in headings}:
            out.append(f"{where}: {path} has no heading with anchor #{anchor}")
    return out


def test_every_cited_document_and_heading_exists():
    assert citations(), "no citation found: the scanner is broken"
    assert problems() == []


def test_the_check_fails_on_a_missing_file_heading_or_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Some heading\n")
    (tmp_path / "otp").mkdir()
    (tmp_path / "otp" / "m.py").write_text(
        '"""See docs/a.md "Some heading", docs/a.md#some-heading, docs/a.md: Some heading."""\n')
    assert problems(tmp_path) == []
    (tmp_path / "otp" / "m.py").write_text(
        '"""docs/gone.md; docs/a.md "Other", "Some heading"; docs/a.md#nope; docs/a.md: Nope\n'
        'docs: "Some heading"\n"""\n')
    found = problems(tmp_path)
    assert len(found) == 5, found
    assert any("gone.md does not exist" in p for p in found)
    assert any("no heading 'Other'" in p for p in found)
    assert any("#nope" in p for p in found)
    assert any("no heading 'Nope'" in p for p in found)
    assert any("without a file" in p for p in found)
