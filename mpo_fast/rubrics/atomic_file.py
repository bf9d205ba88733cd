"""Crash-safe file replacement: a reader sees either the old file or the new one, never a mix.

Sequence: write a temp file in the same directory (os.replace is only atomic within one file
system), fsync it (so the data is on disk before the name points at it), os.replace over the
target, then fsync the directory (so the rename itself survives a power loss).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Temp names start with this so a store can recognise and sweep leftovers of a crashed write.
TEMP_PREFIX = ".tmp-"


def fsync_directory(directory: Path) -> None:
    """Persist a rename. Not possible on Windows (directories cannot be opened): skipped there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except (PermissionError, IsADirectoryError, OSError):
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on directories
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` atomically; on any error the previous file is left untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        # Includes KeyboardInterrupt: never leave a half-written temp file behind if we can help it.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(target.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_atomic(path, text.encode("utf-8"))
