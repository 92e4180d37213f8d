"""docs/threat-model.md claims a mitigation only with the test that shows it: those tests exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }


def test_every_test_the_threat_model_names_exists():
    text = (ROOT / "docs" / "threat-model.md").read_text()
    named = re.findall(r"(test_\w+\.py)::(test_\w+)", text)
    assert len(named) >= 30
    missing = [f"{f}::{t}" for f, t in named if t not in _tests_in(ROOT / "tests" / f)]
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"


def test_every_mitigation_row_names_a_test_or_is_marked_open():
    """A table row of a threat either names a test or says **open**."""
    text = (ROOT / "docs" / "threat-model.md").read_text()
    section = text[text.index("## Threats, mitigations") : text.index("## Open, in one list")]
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| threat") and "---" not in line
    ]
    assert rows
    bare = [r for r in rows if "::test_" not in r and "**open**" not in r]
    assert not bare, f"threat rows with neither a test nor **open**: {bare}"
