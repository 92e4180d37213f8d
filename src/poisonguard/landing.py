"""The landing folder's rules: which names are batches, sources and files still being written.

Landed files are untrusted, names included. The rules:

* Batches are regular files ending in ``.parquet``, ``.pq``, ``.csv`` or ``.csv.gz``,
  directly in the landing folder (the ``default`` source) or one level down in a
  *source folder* (``landing/<source>/<file>``: a partner, a scraper, a labelling
  tool). A source folder's name is letters, digits, ``.``, ``_`` and ``-`` (at most
  64, not named like a batch file). Symbolic links are never followed; other
  folders, links, devices and files of other kinds are *skipped*, with a reason the
  ledger keeps (``poisonguard status`` lists them).
* A file still being written is not taken. Writers should land a file under a
  name starting with ``.`` or ending in ``.part``/``.tmp`` and rename it when it
  is whole (the rename is atomic); such names are ignored. For writers that
  cannot, a file is taken only once its size and modification time have not
  changed for ``settle_seconds``, and only if they do not change while it is read.
* A taken file is copied into the store's staging area as it is hashed. The copy
  is what is validated, scored and committed (or kept under ``rejected/``), so
  a batch's SHA-256 is the hash of exactly the bytes that were judged.
* Names reach messages and file names only through :func:`shown` (escaped and
  bounded) and :func:`safe_stem` (a bounded set of characters).

This module is pure: it names things. Looking at the folder, copying a file out of
it and reading it are the store's (``poisonguard.store.landing``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BATCH_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
#: Names a writer uses while a file is incomplete; renamed when whole.
IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".inprogress")
#: How a stem is shortened in a batch id and in file names the store writes.
MAX_STEM = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: What a source folder may be called.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The source of files directly in the landing folder.
DEFAULT_SOURCE = "default"


def batch_suffix(name: str) -> str | None:
    """The batch kind a file name ends in (``".csv.gz"``, ``".parquet"``, ...), or None."""
    low = name.lower()
    return next((s for s in sorted(BATCH_SUFFIXES, key=len, reverse=True) if low.endswith(s)), None)


def safe_stem(name: str) -> str:
    """A file name's stem reduced to ``[A-Za-z0-9._-]``, at most ``MAX_STEM`` characters."""
    suffix = batch_suffix(name)
    stem = name[: -len(suffix)] if suffix else name
    safe = _UNSAFE.sub("_", stem).strip("._-")[:MAX_STEM].strip("._-")
    return safe or "batch"


def batch_id_for(name: str, sha256: str) -> str:
    """A batch's id: its file name's safe stem and the start of its content hash."""
    return f"{safe_stem(name)}-{sha256[:12]}"


def source_of(name: str) -> str:
    """The landing source of a batch, given the name its ledger row keeps (``source``).

    ``<source>/<file>`` for a file in a source folder, the bare file name for one
    directly in the landing folder, which belongs to :data:`DEFAULT_SOURCE`.
    """
    return name.split("/", 1)[0] if "/" in name else DEFAULT_SOURCE


@dataclass(frozen=True)
class Entry:
    """One entry of the landing folder, as ``survey`` found it.

    Attributes
    ----------
    name : str
        The entry's name, as on disk (untrusted text): ``<source>/<file>`` for a file
        in a source folder.
    path : Path
    size, mtime_ns : int
        From ``lstat``: a batch is re-read only when these change.
    skip : str or None
        Why the entry is not a batch (a link, a folder, another kind of file);
        None for a batch file.
    """

    name: str
    path: Path
    size: int
    mtime_ns: int
    skip: str | None = None

    @property
    def identity(self) -> tuple[str, int, int]:
        return (self.name, self.size, self.mtime_ns)


def in_progress(name: str) -> bool:
    """True for names writers use while a file is incomplete (hidden, ``.part``, ``.tmp``)."""
    return name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES)


def is_source_name(name: str) -> bool:
    """True for a name a source folder may have (and no batch file has)."""
    return _SOURCE_NAME.fullmatch(name) is not None and batch_suffix(name) is None
