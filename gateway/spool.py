"""Store-and-forward spool for minimised messages while the cloud broker is away.

At-least-once: a device's QoS 1 message is acknowledged to the local broker only
once its minimised form is acknowledged by the cloud *or committed here*. So the
spool holds only what the pipeline already produced (bytes out of the hot path);
there is deliberately no method that takes a raw message, and raw data never
touches disk.

Storage is one SQLite file in WAL mode with ``synchronous=NORMAL``. In WAL mode a
commit appends to the WAL file before ``append`` returns, so a committed entry
survives a crash or SIGKILL of the process (the OS still holds the write) and the
database is never corrupted. What NORMAL gives up, compared with FULL, is an fsync
per commit: after a power cut or kernel crash the last few commits may roll back.
That is the trade taken here, because an fsync per batch would cost milliseconds
on the SD cards and eMMC of site boxes, and the spool only matters while the
uplink is down.

The class is synchronous. One call costs tens of microseconds (one transaction,
no fsync), so the asyncio service may call it inline per batch or through
``asyncio.to_thread``; either way one connection is shared, guarded by a lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

__all__ = ["Entry", "Record", "Spool"]

# (device, topic, payload, qos, properties), as taken by ``Spool.append``.
Record = tuple[str, str, bytes, int, bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    created REAL NOT NULL
)
"""
# Bytes as counted against max_bytes; a TEXT column's length() counts characters.
_SIZE = "length(payload) + length(CAST(topic AS BLOB)) + length(properties)"
# Stay well under SQLite's limit on host parameters per statement.
_CHUNK = 500


class Entry(msgspec.Struct, frozen=True):
    """One spooled message, as it will be republished to the cloud."""

    id: int
    device: str
    topic: str
    payload: bytes
    qos: int
    properties: bytes
    created: float = 0.0  # when it was spooled (time.time()), e.g. to honour a message expiry


def _size(topic: str, payload: bytes, properties: bytes) -> int:
    return len(payload) + len(topic.encode()) + len(properties)


class Spool:
    """A bounded FIFO of minimised messages in one SQLite file (mode 0600).

    Rows are read back in id order, which is insertion order and so keeps every
    device's messages in order. AUTOINCREMENT makes ids never reused, so a late
    ``delete`` of ids the cloud acknowledged can never hit a newer entry.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        path = Path(path)
        # Create the file ourselves so it is never readable by others, not even
        # for a moment; SQLite gives its -wal and -shm files the same mode.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        self.max_bytes = max_bytes
        self.refused = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"{path}: WAL mode unavailable (got {mode!r})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            depth, size = self._db.execute(
                f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM spool"
            ).fetchone()
        except BaseException:
            self._db.close()
            raise
        self._depth: int = depth
        self._bytes: int = size

    def append(
        self, device: str, topic: str, payload: bytes, qos: int, properties: bytes = b""
    ) -> int | None:
        """Commit one entry and return its id, or None when it does not fit.

        On None the caller must not acknowledge the message upstream, so the
        backlog waits at the local broker instead of being lost.
        """
        with self._lock:
            size = _size(topic, payload, properties)
            if self._bytes + size > self.max_bytes:
                self.refused += 1
                return None
            cur = self._db.execute(
                "INSERT INTO spool (device, topic, payload, qos, properties, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (device, topic, payload, qos, properties, time.time()),
            )
            self._depth += 1
            self._bytes += size
            return cur.lastrowid

    def append_many(self, records: Sequence[Record]) -> int:
        """Commit the longest prefix of ``records`` that fits, in one transaction.

        Returns how many were stored; the rest (counted in ``refused``) are not
        tried one by one, since storing a later message of a device before an
        earlier one would break its order. One commit per batch, because the
        commit, not the insert, is what costs.
        """
        with self._lock:
            now = time.time()
            total = self._bytes
            rows: list[tuple[str, str, bytes, int, bytes, float]] = []
            for device, topic, payload, qos, properties in records:
                size = _size(topic, payload, properties)
                if total + size > self.max_bytes:
                    break
                total += size
                rows.append((device, topic, payload, qos, properties, now))
            if rows:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT INTO spool (device, topic, payload, qos, properties, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            self.refused += len(records) - len(rows)
            self._depth += len(rows)
            self._bytes = total
            return len(rows)

    def peek(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` entries, oldest first; they stay until ``delete``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, topic, payload, qos, properties, created FROM spool"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def delete(self, ids: Iterable[int]) -> None:
        """Drop entries the cloud has acknowledged; unknown ids are ignored."""
        ids = list(ids)
        with self._lock:
            removed = freed = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    sizes = self._db.execute(
                        f"DELETE FROM spool WHERE id IN ({marks}) RETURNING {_SIZE}", chunk
                    ).fetchall()
                    removed += len(sizes)
                    freed += sum(size for (size,) in sizes)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= removed
            self._bytes -= freed

    def close(self) -> None:
        """Close the connection; the last close also checkpoints and removes the WAL."""
        with self._lock:
            self._db.close()

    # Kept last in the class body so that, for readers and type checkers, ``bytes``
    # in the annotations above is still the builtin type.
    @property
    def depth(self) -> int:
        """Number of entries waiting."""
        return self._depth

    @property
    def bytes(self) -> int:
        """Bytes of payload + topic + properties waiting (what max_bytes bounds)."""
        return self._bytes
