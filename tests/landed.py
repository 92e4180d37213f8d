"""Helpers for tests that reuse a demo project's landing folder."""

from __future__ import annotations

import shutil
from pathlib import Path


def empty(landing: Path) -> None:
    """Take every file out of a landing folder, its source folders too."""
    for entry in Path(landing).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def keep_only(landing: Path, *files: str) -> None:
    """Take every batch file out of a landing folder but those with the names given (in
    whichever source folder they landed)."""
    for path in Path(landing).rglob("*"):
        if path.is_file() and path.name not in files:
            path.unlink()
