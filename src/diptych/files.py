"""Files that are never half-written.

Atomic writes (`atomic_file`, `write_atomic`): readers see the old file or the complete new one. The data goes
to a temporary file in the target's folder (so the final `os.replace` is a rename on one file system), is
flushed to disk, then moved into place; on any error the temporary file is removed and an existing target is
left as it was.

Resumable logs (`JsonlLog`, `complete_lines`): append-only JSONL files of finished work (the eval runner's
samples, data generation's pairs and rejections) that a crash leaves with at most a torn last line, which is
cut off or skipped, so a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DiptychError


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


class JsonlLog:
    """An append-only JSONL log. Opening takes an exclusive advisory lock (POSIX), so two runs cannot append to
    the same file (`writer` names the other run and `busy` is the advice in the error), and cuts off a partial
    last line left by an interrupted write; `append` writes a record as one line with one `os.write`, then
    `fsync`. Failures raise `error`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        error: type[DiptychError] = DiptychError,
        writer: str = "run",
        busy: str = "wait for it to finish",
    ):
        self.path = Path(path)
        self.error = error
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            self._lock(writer, busy)
            self._cut_partial_tail()
        except BaseException:
            os.close(self.fd)
            raise

    def _lock(self, writer: str, busy: str) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise self.error(f"another {writer} is writing {self.path}; {busy}") from err

    def _cut_partial_tail(self) -> None:
        size = os.fstat(self.fd).st_size
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(self.fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            os.ftruncate(self.fd, end)

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one line: one `os.write` of the full bytes, then `fsync`."""
        data = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
        written = os.write(self.fd, data)
        if written != len(data):  # a short write (disk full): never leave half a line before the next one
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
            raise self.error(f"could not write a whole line to {self.path} (disk full?); free space and run again")
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def complete_lines(path: str | os.PathLike[str]) -> list[tuple[int, bytes]]:
    """(line number, bytes) of each complete, non-blank line of a log; a last line without its newline (a
    write cut short) is left out. A missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is empty or a torn tail
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
