"""Per-row arrays kept on disk while a batch is judged in chunks, and nowhere after.

Judging a batch in chunks keeps a few numbers a row (combined p-values, the report's
scores and projection) for the passes that follow. ``RowFile`` writes them chunk by
chunk into a file of the staging folder that is unlinked as soon as it is opened: the
open file and its mapping keep it, nothing stays on disk whatever happens, and the
file is readable by its owner only from its creation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO
from uuid import uuid4

import numpy as np


class RowFile:
    """A per-row float64 array (``width`` values a row) written chunk by chunk: in memory,
    or, given a directory, in an unlinked file there, read back with ``np.memmap``.

    Parameters
    ----------
    directory : str or Path, optional
        Where the file is made; None keeps the rows in memory.
    width : int, default 1
        Values a row: ``finish`` returns shape (rows,) for 1, (rows, width) otherwise.
    """

    def __init__(self, directory: str | Path | None, width: int = 1) -> None:
        self.parts: list[np.ndarray] = []
        self.file: BinaryIO | None = None
        self.width = int(width)
        if directory is not None:
            path = Path(directory) / f"pg-rows-{uuid4().hex}.f8"
            # Owner-only from its creation: the rows' scores must not be readable by others.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self.file = os.fdopen(fd, "w+b")
            path.unlink()
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        """Add rows: an array of shape (k,) for width 1, (k, width) otherwise."""
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1, self.width)
        self.size += values.shape[0]
        if self.file is None:
            self.parts.append(values)
        else:
            values.tofile(self.file)

    def finish(self) -> np.ndarray:
        """Every row written, read-only: shape (rows,) for width 1, (rows, width) otherwise."""
        shape = (self.size,) if self.width == 1 else (self.size, self.width)
        if self.file is None:
            rows = np.concatenate(self.parts) if self.parts else np.zeros((0, self.width))
            return rows.reshape(shape)
        with self.file:
            self.file.flush()
            if self.size == 0:
                return np.zeros(shape)
            return np.memmap(self.file, dtype=np.float64, mode="r", shape=shape)
