"""The library never imports Prefect; flows are the only adapters."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import poisonguard


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
