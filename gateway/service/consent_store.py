"""The newest ``issued_at`` seen per device and purpose, kept across restarts.

Why: a restarted gateway learns consent from what is retained on the local broker.
If someone replaced the retained revocation with an older, validly signed grant (a
replay), the signature alone would let it back in. With the watermark of the last
accepted record on disk, a record older than it stays ``stale`` after a restart too.

No device id is stored: rows are keyed by a keyed hash (HMAC-SHA256 under a subkey
of the key file's active key) of the device and purpose. After a key rotation the
old rows cannot be matched any more and are dropped (logged); the retained records
then set new watermarks. SQLite, 0600, next to the worker's spool.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from pathlib import Path

from gateway.keys import Keyring
from gateway.telemetry import get_logger

__all__ = ["WatermarkStore"]

log = get_logger("gateway.consent")
PURPOSE = "consent-watermark|v1"


class WatermarkStore:
    """(device, purpose) -> newest issued_at accepted; writes are batched by the caller (``flush``)."""

    def __init__(self, path: str | os.PathLike[str], keyring: Keyring, max_rows: int) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._key = keyring.derive(PURPOSE, 32)
        self._kid = keyring.active
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS mark (h BLOB PRIMARY KEY, issued_at INTEGER NOT NULL)")
        row = self._db.execute("SELECT v FROM meta WHERE k = 'kid'").fetchone()
        if row is not None and row[0] != self._kid:
            n = self._db.execute("SELECT count(*) FROM mark").fetchone()[0]
            log.warning("consent_watermarks_reset", rows=n, reason="the active key changed",
                        note="the retained consent records set new watermarks")
            self._db.execute("DELETE FROM mark")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('kid', ?)", (self._kid,))
        self._marks: dict[bytes, int] = dict(self._db.execute("SELECT h, issued_at FROM mark"))
        self._dirty: dict[bytes, int] = {}

    def _h(self, device: str, purpose: str) -> bytes:
        return hmac.new(self._key, f"{device}\n{purpose}".encode(), hashlib.sha256).digest()[:16]

    def get(self, device: str, purpose: str) -> int | None:
        return self._marks.get(self._h(device, purpose))

    def set(self, device: str, purpose: str, issued_at: int) -> None:
        h = self._h(device, purpose)
        if self._marks.get(h, -1) < issued_at:
            self._marks[h] = issued_at
            self._dirty[h] = issued_at

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def flush(self) -> None:
        """Write what changed in one transaction; beyond ``max_rows`` forget the oldest marks."""
        if not self._dirty:
            return
        rows, self._dirty = list(self._dirty.items()), {}
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO mark VALUES (?, ?)", rows)
            if len(self._marks) > self.max_rows:
                cut = sorted(self._marks.values())[len(self._marks) - self.max_rows]
                self._db.execute("DELETE FROM mark WHERE issued_at < ?", (cut,))
                self._marks = {h: t for h, t in self._marks.items() if t >= cut}

    def close(self) -> None:
        self.flush()
        self._db.close()
