"""Multi-turn editing sessions kept in SQLite, so they survive a server restart.

A session is its source image plus a list of turns (instruction, seed, options, image after Emu Edit
thresholding). Images are PNG blobs inside the database: nothing a client sends ever becomes a file path.
A turn is `plan_turn` (read the current image), an edit through the model queue, then `commit_turn`
(threshold and store); the commit refuses (409) if another turn landed in between.
"""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..conditioning.thresholding import threshold_turn
from ..errors import InputError
from .settings import ApiError

__all__ = ["SessionStore", "TurnPlan"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    threshold REAL,
    seed INTEGER NOT NULL,
    source BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    instruction TEXT NOT NULL,
    seed INTEGER NOT NULL,
    options TEXT NOT NULL,
    image BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (session_id, idx)
);
"""


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _from_png(blob: bytes) -> Image.Image:
    # Only our own PNGs are stored here, but decode fully so no file handle lingers.
    with Image.open(io.BytesIO(blob)) as image:
        image.load()
        return image.convert("RGB")


@dataclass
class TurnPlan:
    """What the next turn of a session starts from."""

    session_id: str
    index: int  # the turn number this edit will become (1-based)
    previous: Image.Image
    default_seed: int
    threshold: float | None


class SessionStore:
    """Sessions in one SQLite file (created with its folder on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per operation: safe from any thread, and WAL lets readers run
        # alongside a writer.
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            with db:
                yield db
        finally:
            db.close()

    def create(self, image: Image.Image, *, threshold: float | None, seed: int = 42) -> str:
        """Store a new session on `image`; returns its random id."""
        if threshold is not None and not 0 <= threshold <= 1:
            raise InputError(f"threshold must be between 0 and 1 (Emu Edit uses 0.03) or none, got {threshold}")
        session_id = secrets.token_urlsafe(16)
        with self._connect() as db:
            db.execute(
                "INSERT INTO sessions (id, created, threshold, seed, source) VALUES (?, ?, ?, ?, ?)",
                (session_id, time.time(), threshold, int(seed), png_bytes(image.convert("RGB"))),
            )
        return session_id

    def _session(self, db: sqlite3.Connection, session_id: str) -> tuple[float | None, int, float]:
        row = db.execute("SELECT threshold, seed, created FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise ApiError(404, f"no session {session_id!r}; create one with POST /v1/sessions")
        return row

    def info(self, session_id: str) -> dict[str, Any]:
        """The session's settings and history (turn number, instruction, seed, options), oldest first."""
        with self._connect() as db:
            threshold, seed, created = self._session(db, session_id)
            rows = db.execute(
                "SELECT idx, instruction, seed, options, created FROM turns WHERE session_id = ? ORDER BY idx",
                (session_id,),
            ).fetchall()
        return {
            "id": session_id,
            "created": created,
            "threshold": threshold,
            "seed": seed,
            "turns": len(rows),
            "history": [
                {"turn": idx, "instruction": text, "seed": s, "options": json.loads(opts), "created": t}
                for idx, text, s, opts, t in rows
            ],
        }

    def image(self, session_id: str, turn: int | None = None) -> Image.Image:
        """The image after turn `turn` (0 = the source; default: the current image)."""
        with self._connect() as db:
            self._session(db, session_id)
            if turn is None:
                row = db.execute(
                    "SELECT image FROM turns WHERE session_id = ? ORDER BY idx DESC LIMIT 1", (session_id,)
                ).fetchone()
            elif turn < 0:
                raise InputError(f"turn must be 0 (the source) or a turn number, got {turn}")
            elif turn == 0:
                row = None
            else:
                row = db.execute(
                    "SELECT image FROM turns WHERE session_id = ? AND idx = ?", (session_id, turn)
                ).fetchone()
                if row is None:
                    count = db.execute("SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()
                    raise ApiError(404, f"session {session_id!r} has no turn {turn} (it has {count[0]} turns)")
            if row is None:
                row = db.execute("SELECT source FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _from_png(row[0])

    def plan_turn(self, session_id: str) -> TurnPlan:
        """Read what the next turn starts from; turn k defaults to seed `session seed + k - 1`."""
        with self._connect() as db:
            threshold, seed, _ = self._session(db, session_id)
            (count,) = db.execute("SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()
        return TurnPlan(session_id, count + 1, self.image(session_id), seed + count, threshold)

    def commit_turn(
        self, plan: TurnPlan, raw: Image.Image, *, instruction: str, seed: int, options: dict[str, Any]
    ) -> Image.Image:
        """Threshold the model's output against the previous image (Emu Edit) and store it as the next turn."""
        previous = plan.previous
        if raw.size != previous.size:
            # Turn 1 resizes the source to the model's panel; later turns keep that size.
            previous = previous.resize(raw.size, Image.Resampling.BICUBIC)
        image = raw if plan.threshold is None else threshold_turn(previous, raw, alpha=plan.threshold)
        try:
            with self._connect() as db:
                (count,) = db.execute("SELECT COUNT(*) FROM turns WHERE session_id = ?", (plan.session_id,)).fetchone()
                if count != plan.index - 1:
                    raise sqlite3.IntegrityError("the session moved on")
                db.execute(
                    "INSERT INTO turns (session_id, idx, instruction, seed, options, image, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        plan.session_id,
                        plan.index,
                        instruction,
                        seed,
                        json.dumps(options),
                        png_bytes(image),
                        time.time(),
                    ),
                )
        except sqlite3.IntegrityError:
            raise ApiError(
                409, f"session {plan.session_id!r} changed while this turn ran (another edit or undo); retry"
            ) from None
        return image

    def undo(self, session_id: str) -> int:
        """Drop the last turn; returns the number of turns left."""
        with self._connect() as db:
            self._session(db, session_id)
            row = db.execute("SELECT MAX(idx) FROM turns WHERE session_id = ?", (session_id,)).fetchone()
            if row[0] is None:
                raise ApiError(409, f"nothing to undo: session {session_id!r} has no turns")
            db.execute("DELETE FROM turns WHERE session_id = ? AND idx = ?", (session_id, row[0]))
            return int(row[0]) - 1
