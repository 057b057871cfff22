"""The layering rules of pyproject.toml ([tool.importlinter]) hold: run import-linter on the source tree."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(contracts)} kept, 0 broken" in out.stdout  # every contract was checked, none skipped


def test_the_leaf_package_is_in_the_contracts():
    """trustkit must stay importable without the application or its libraries."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    leaf = [c for c in contracts if c.get("source_modules") == ["trustkit"]]
    assert leaf and set(leaf[0]["forbidden_modules"]) == {"scep_server", "crl", "otp"}
