"""Reading released datasets stored as parquet with Hugging Face image cells: shared by the benchmarks
(`eval/benchmarks.py`) and the training data (`train/data.py`), so both accept the same cells and fail the
same way. pyarrow is imported on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DiptychError


def pyarrow_modules(error: type[DiptychError] = DiptychError) -> tuple[Any, Any]:
    """`(pyarrow, pyarrow.parquet)`, or `error` saying how to install it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is a dependency
        raise error("reading parquet / Arrow files needs pyarrow: pip install pyarrow") from err
    return pa, pq


def open_parquet(file: Path, error: type[DiptychError] = DiptychError) -> Any:
    """A `pyarrow.parquet.ParquetFile` (metadata read, no rows), or `error` naming the damaged file."""
    _, pq = pyarrow_modules(error)
    try:
        return pq.ParquetFile(str(file))
    except Exception as err:
        raise error(f"{file} is not a readable parquet file ({err}); download it again") from err


def image_cell(value: object, base: Path, *, where: str, error: type[DiptychError] = DiptychError) -> bytes | Path:
    """An image cell's content: the encoded bytes or the file it names, relative to `base` (the folder of the
    parquet file). A cell is a `{"bytes", "path"}` struct (the Hugging Face `Image` feature; bytes win), raw
    bytes, or a path string; anything else raises `error` naming `where`."""
    if isinstance(value, dict):
        data, rel = value.get("bytes"), value.get("path")
        if data:
            return bytes(data)
        if rel:
            return base / rel
        raise error(f"{where}: the image cell has neither bytes nor a path")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str) and value:
        return base / value
    raise error(f"{where}: the image cell is empty or of type {type(value).__name__}")
