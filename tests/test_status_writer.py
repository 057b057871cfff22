"""Certificate status has one writer (`scep_server.ca.revocation.change_status` / `lock_status`): no other
module writes ``certificates.status`` or its revocation fields, so every change records its status-change
event (which the CRL safety net watches) and reaches the CRL publishers."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRITER = "scep_server/ca/revocation.py"
# Modules allowed to write certificate status directly besides the writer (none: enrolment, binding and
# attestation call revocation.change_status / lock_status inside their transactions).
TEMPORARY: tuple[str, ...] = ()

STATUS_COLUMNS = frozenset({"status", "revocation_reason", "revoked_at", "invalidity_date"})
_RAW_UPDATE = re.compile(r"\bupdate\s+certificates\b", re.IGNORECASE)


def _is_certificates_update(node: ast.AST) -> bool:
    """``certificates.update()`` or ``update(certificates)`` (sa.update, sqlalchemy.update, ...)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "update" and isinstance(func.value, ast.Name) \
            and func.value.id == "certificates":
        return True
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name == "update" and bool(node.args) and isinstance(node.args[0], ast.Name) \
        and node.args[0].id == "certificates"


def _names_a_status_column(values: ast.Call) -> bool:
    """Whether a ``.values(...)`` call may set a status column (anything it cannot tell counts as yes)."""
    for kw in values.keywords:
        if kw.arg is None or kw.arg in STATUS_COLUMNS:
            return True
    for arg in values.args:
        if not isinstance(arg, ast.Dict):
            return True
        for key in arg.keys:
            if key is None:
                return True
            if isinstance(key, ast.Constant) and key.value in STATUS_COLUMNS:
                return True
            if isinstance(key, ast.Attribute) and key.attr in STATUS_COLUMNS:
                return True
            if not isinstance(key, (ast.Constant, ast.Attribute)):
                return True
    return False


def direct_writes(source: str) -> list[int]:
    """Line numbers where the source writes certificate status itself, or calls inventory's set_status."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _RAW_UPDATE.search(node.value):
            found.append(node.lineno)
        elif _is_certificates_update(node):
            # follow the chain (.where(...).values(...)) up to its .values(); an update without one, or one
            # kept in a variable, cannot be told apart from a status write
            cur, values = node, None
            while cur in parents:
                up = parents[cur]
                if isinstance(up, ast.Attribute) and up.value is cur:
                    cur = up
                elif isinstance(up, ast.Call) and up.func is cur:
                    if isinstance(cur, ast.Attribute) and cur.attr in ("values", "ordered_values"):
                        values = up
                        break
                    cur = up
                else:
                    break
            if values is None or _names_a_status_column(values):
                found.append(node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name == "set_status":
                found.append(node.lineno)
    return sorted(found)


def _writers() -> dict[str, list[int]]:
    out = {}
    for path in sorted((ROOT / "scep_server").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        lines = direct_writes(path.read_text())
        if lines:
            out[rel] = lines
    return out


def test_only_the_writer_writes_certificate_status():
    offenders = {rel: lines for rel, lines in _writers().items() if rel != WRITER and not rel.startswith(TEMPORARY)}
    assert offenders == {}, (f"certificate status written outside {WRITER} (call revocation.change_status "
                             f"inside the transaction instead): {offenders}")


def test_the_writer_is_what_the_scan_recognises():
    assert direct_writes((ROOT / WRITER).read_text()), "the scan no longer sees the writer's own update"


def test_temporary_allowances_are_still_needed():
    """An entry of TEMPORARY that no longer writes status directly must leave the list."""
    writers = _writers()
    for entry in TEMPORARY:
        if not (ROOT / entry).exists():
            continue
        assert any(rel.startswith(entry) for rel in writers), f"{entry} no longer writes status: drop it"


def test_the_scan_finds_direct_writes():
    def lines(src: str) -> list[int]:
        return direct_writes(src.strip() + "\n")

    for src in (
        'conn.execute(certificates.update().where(certificates.c.serial == s).values(status="revoked"))',
        'conn.execute(certificates.update().where(x).values(revoked_at=now, updated_at=now))',
        'conn.execute(certificates.update().values(**values))',
        'conn.execute(sa.update(certificates).where(x).values({"status": "hold"}))',
        'conn.execute(update(certificates).values({certificates.c.invalidity_date: now}))',
        'stmt = certificates.update().where(x)',
        'conn.execute(certificates.update(), [{"serial": s, "status": "hold"}])',
        'conn.execute(sa.text("UPDATE certificates SET status = \'hold\'"))',
        'await inventory.set_status(conn, serial, "hold", at=now)',
    ):
        assert lines(src) == [1], src
    for src in (
        'conn.execute(certificates.update().where(x).values(first_used_at=at))',
        'conn.execute(devices.update().where(x).values(status="deleted"))',
        'conn.execute(certificates.insert().values(status="valid"))',
        'await change_status(conn, serial, CertStatus.HOLD, at=now, actor="a")',
        'conn.execute(sa.select(certificates.c.status))',
    ):
        assert lines(src) == [], src
