"""Atomic file writes: readers see the old file or the complete new one, never a partial file.

The data goes to a temporary file in the target's folder (so the final `os.replace` is a rename on one file
system), is flushed to disk, then moved into place; on any error the temporary file is removed and an
existing target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace `path` when the block ends without an error.

    `fsync=False` skips flushing to disk before the rename: still never a partial file for readers, but a
    power cut may leave an empty one; for bulk exports (thousands of small files) that can be redone.
    """
    target = Path(path)
    tmp, fd = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> Path:
    """Write `data` (text is UTF-8 encoded, line ends kept as given) to `path` atomically."""
    with atomic_file(path, fsync=fsync) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _create_temp(target: Path) -> tuple[Path, int]:
    # os.open with 0o666 (rather than mkstemp's 0o600) lets the umask decide the final permissions,
    # as for any other file the user writes.
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
