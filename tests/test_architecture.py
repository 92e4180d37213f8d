"""The layers hold: the library never imports Prefect, and only the store touches the disk."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import poisonguard

LIBRARY = Path(poisonguard.__file__).resolve().parent
FLOWS = Path(__file__).resolve().parents[1] / "flows"
#: Modules that read or write files (or lock them), or reach the ledger's database, below the
#: store's own functions.
DISK_MODULES = ("sqlite3", "pyarrow.parquet", "tempfile", "fcntl", "psycopg", "fsspec")


def test_importing_every_library_module_does_not_import_prefect():
    modules = [m.name for m in pkgutil.walk_packages(poisonguard.__path__, "poisonguard.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(len(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    assert "poisonguard.cli" in modules and "poisonguard.pipeline" in modules


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (``from a import b`` counts as
    ``a`` and ``a.b``, since ``b`` may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _touches_disk(name: str) -> bool:
    return any(name == m or name.startswith(f"{m}.") for m in DISK_MODULES)


def test_only_the_store_touches_files_or_the_ledger_database():
    """Every module of the library and of the flows but ``poisonguard.store``'s reaches the
    disk and the ledger through the store: none imports sqlite3, pyarrow.parquet, tempfile,
    fcntl, psycopg or fsspec."""
    store = LIBRARY / "store"
    sources = sorted([*LIBRARY.rglob("*.py"), *FLOWS.rglob("*.py")])
    offenders = [
        f"{path.relative_to(path.parents[1])}: {name}"
        for path in sources
        if not path.is_relative_to(store)
        for name in sorted(_imports(path))
        if _touches_disk(name)
    ]
    assert offenders == [], "disk access outside poisonguard.store: " + "; ".join(offenders)
    # The check sees what it should: the flows, and the store's own uses of all six.
    assert FLOWS / "ingest.py" in sources and LIBRARY / "pipeline.py" in sources
    used = set().union(*(_imports(p) for p in sources if p.is_relative_to(store)))
    assert {m for m in DISK_MODULES if any(n == m for n in used)} == set(DISK_MODULES)
