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

Failures: every SQLite error (disk full, I/O, busy, corrupt) leaves the spool as
it was before the call and raises `SpoolError` (with ``op`` and ``kind``), never a
half-updated counter and never "cannot rollback". The caller treats it like a full
spool: it does not acknowledge, and retries later.

Disk use is bounded: rows by ``max_bytes`` (payload + topic + properties; SQLite's
own overhead comes on top, see docs/operations.md), the WAL by an automatic
checkpoint every `WAL_PAGES` pages and ``journal_size_limit`` (`WAL_LIMIT`), and
`compact` (after a drain) checkpoints with TRUNCATE and gives freed pages back to
the file system (incremental auto-vacuum).

Messages the cloud keeps refusing are moved to a quarantine table in the same file
(the same minimised bytes), where ``gateway spool list|resend|purge`` finds them.

The class is synchronous. One call costs tens of microseconds (one transaction,
no fsync), so the asyncio service may call it inline per batch or through
``asyncio.to_thread``; either way one connection is shared, guarded by a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["SCHEMA_VERSION", "Entry", "Quarantined", "Record", "Spool", "SpoolError"]

# (device, topic, payload, qos, properties), as taken by ``Spool.append``.
Record = tuple[str, str, bytes, int, bytes]

SCHEMA_VERSION = 1  # PRAGMA user_version; 0 is a file written before versions were recorded
WAL_PAGES = 64  # automatic checkpoint once the WAL holds this many pages (256 KiB at 4 KiB pages)
WAL_LIMIT = 256 * 1024  # journal_size_limit: a checkpointed WAL is truncated back to this size
# Appends stop (like a full spool) while the file system has less than this free, plus twice
# the batch: the drain's deletes and the checkpoint that moves the WAL into the database need
# room too, and on a completely full disk they would fail and nothing could be freed.
DISK_MARGIN = 256 * 1024
BUSY_TIMEOUT_MS = 2000  # `gateway spool` and the service may share the file briefly
LOCK_WAIT_S = 10.0  # how long a new owner waits for the previous one to let go of the file

_TABLES = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    created REAL NOT NULL,
    quarantined REAL NOT NULL,
    reason INTEGER NOT NULL
);
"""
# Bytes as counted against max_bytes; a TEXT column's length() counts characters.
_SIZE = "length(payload) + length(CAST(topic AS BLOB)) + length(properties)"
# Stay well under SQLite's limit on host parameters per statement.
_CHUNK = 500
_COLUMNS = "device, topic, payload, qos, properties, created"


class SpoolError(Exception):
    """A spool operation failed; nothing it was asked to do happened.

    ``kind`` is one of full, io, busy, corrupt, readonly, schema, other (for a metric
    label and the log); ``op`` names the operation (append, delete, peek, ...).
    The message never quotes stored data."""

    def __init__(self, op: str, kind: str, detail: str) -> None:
        super().__init__(f"spool {op} failed ({kind}): {detail}")
        self.op = op
        self.kind = kind


def _kind(exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    base = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if base == sqlite3.SQLITE_FULL or "full" in text:
        return "full"
    if base in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return "busy"
    if base in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        return "corrupt"
    if base == sqlite3.SQLITE_READONLY or "readonly" in text:
        return "readonly"
    if base in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) or "i/o" in text or "disk" in text:
        return "io"
    return "other"


class Entry(msgspec.Struct, frozen=True):
    """One spooled message, as it will be republished to the cloud."""

    id: int
    device: str
    topic: str
    payload: bytes
    qos: int
    properties: bytes
    created: float = 0.0  # when it was spooled (time.time()), e.g. to honour a message expiry


class Quarantined(msgspec.Struct, frozen=True):
    """A message the cloud refused repeatedly, set aside so it no longer blocks the others."""

    id: int
    device: str  # the policy's name (the spool's grouping label, never a device id)
    topic: str
    payload: bytes
    qos: int
    properties: bytes
    created: float
    quarantined: float
    reason: int  # the cloud's PUBACK reason code, e.g. 0x87 not authorised


def _size(topic: str, payload: bytes, properties: bytes) -> int:
    return len(payload) + len(topic.encode()) + len(properties)


class Spool:
    """A bounded FIFO of minimised messages in one SQLite file (mode 0600).

    Rows are read back in id order, which is insertion order and so keeps every
    device's messages in order. AUTOINCREMENT makes ids never reused, so a late
    ``delete`` of ids the cloud acknowledged can never hit a newer entry.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, *, exclusive: bool = True,
                 lock_wait_s: float = LOCK_WAIT_S) -> None:
        """Open (or create) the spool. ``exclusive``: hold an advisory lock for this process's
        lifetime (the service does), so a second gateway, or ``gateway spool resend``, is refused
        instead of changing rows behind the running gateway's counters. The lock is waited for
        up to ``lock_wait_s`` (a restarted worker may start while its predecessor still exits)."""
        path = Path(path)
        # Create the file ourselves so it is never readable by others, not even
        # for a moment; SQLite gives its -wal and -shm files the same mode.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if exclusive:  # flock, not SQLite's own POSIX locks: the two do not interfere on Linux
                deadline = time.monotonic() + lock_wait_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise
                        time.sleep(0.1)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError("open", "busy", f"{path} is in use by another process (a running gateway?)") from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd: int | None = fd if exclusive else None
        if not exclusive:
            os.close(fd)
        self.path = path
        self.max_bytes = max_bytes
        self.refused = 0
        self.disk_full = False  # the last append_many stopped short because the disk (not max_bytes) is full
        self.quarantine_dropped = 0  # oldest quarantined messages dropped to keep the quarantine bounded
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._open(path)
            depth, size = self._db.execute(
                f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM spool"
            ).fetchone()
            self._quarantined, self._qbytes = self._db.execute(
                f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM quarantine").fetchone()
        except sqlite3.Error as exc:
            self._release()
            raise SpoolError("open", _kind(exc), f"{path}: {exc}") from None
        except BaseException:
            self._release()
            raise
        self._depth: int = depth
        self._bytes: int = size

    def _open(self, path: Path) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError("open", "schema", f"{path} has spool schema version {version}; this gateway "
                             f"knows versions up to {SCHEMA_VERSION} (written by a newer gateway? "
                             "deliver or move the file away before downgrading)")
        fresh = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if fresh:  # must precede the first table; an existing file keeps its mode
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"WAL mode unavailable (got {mode!r})")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        if version < SCHEMA_VERSION:  # 0: a spool table only (or nothing yet); add the quarantine
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _TABLES.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _room(self) -> int:
        """Bytes of rows the file system can take now, keeping DISK_MARGIN (rows count twice: WAL, then database)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return self.max_bytes  # cannot tell: SQLite reports a full disk itself
        free = st.f_bavail * st.f_frsize
        if free < DISK_MARGIN + 2 * self.max_bytes:  # pages freed by deletes are reused before the file grows
            with contextlib.suppress(sqlite3.Error):
                pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
                free += pages * self._db.execute("PRAGMA page_size").fetchone()[0]
        return max(0, (free - DISK_MARGIN) // 2)

    def _check_room(self, size: int) -> None:
        room = self._room()
        if size > room:
            raise SpoolError("append", "full", f"file system nearly full (room for {room} bytes; the spool keeps "
                             f"{DISK_MARGIN} bytes free for its deletes and checkpoints)")

    def _rollback(self) -> None:
        """Roll back if a transaction is still open (SQLite may already have rolled back)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _write(self, op: str, body: Any) -> Any:
        """Run ``body()`` in one IMMEDIATE transaction; any SQLite error rolls back and raises SpoolError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            result = body()
            self._db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            self._rollback()
            raise SpoolError(op, _kind(exc), str(exc)) from None
        except BaseException:
            self._rollback()
            raise

    def append(
        self, device: str, topic: str, payload: bytes, qos: int, properties: bytes = b""
    ) -> int | None:
        """Commit one entry and return its id, or None when it does not fit.

        On None the caller must not acknowledge the message upstream, so the
        backlog waits at the local broker instead of being lost.
        """
        with self._lock:
            size = _size(topic, payload, properties)
            if self._bytes + size > self.max_bytes - self._qbytes:
                self.refused += 1
                return None
            self._check_room(size)
            row_id = self._write("append", lambda: self._db.execute(
                f"INSERT INTO spool ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (device, topic, payload, qos, properties, time.time()),
            ).lastrowid)
            self._depth += 1
            self._bytes += size
            return row_id

    def append_many(self, records: Sequence[Record]) -> int:
        """Commit the longest prefix of ``records`` that fits, in one transaction.

        Returns how many were stored; the rest (counted in ``refused``) are not
        tried one by one, since storing a later message of a device before an
        earlier one would break its order. One commit per batch, because the
        commit, not the insert, is what costs. Raises SpoolError (nothing stored).
        """
        with self._lock:
            now = time.time()
            total = self._bytes
            cap = self.max_bytes - self._qbytes  # the quarantine counts against max_bytes too
            limit = min(cap, self._bytes + self._room())
            rows: list[tuple[str, str, bytes, int, bytes, float]] = []
            for device, topic, payload, qos, properties in records:
                size = _size(topic, payload, properties)
                if total + size > limit:
                    break
                total += size
                rows.append((device, topic, payload, qos, properties, now))
            if not rows and records and limit < cap:  # the disk, not max_bytes, is what is full
                self._check_room(_size(records[0][1], records[0][2], records[0][4]))
            self.disk_full = bool(records) and len(rows) < len(records) and limit < cap
            while rows:
                try:
                    self._write("append", lambda rows=rows: self._db.executemany(
                        f"INSERT INTO spool ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows))
                    break
                except SpoolError as exc:  # full: the first half may still fit (order kept: a prefix)
                    if exc.kind != "full" or len(rows) == 1:
                        raise
                    rows = rows[: len(rows) // 2]
                    self.disk_full = True
            total = self._bytes + sum(_size(r[1], r[2], r[4]) for r in rows)
            self.refused += len(records) - len(rows)
            self._depth += len(rows)
            self._bytes = total
            return len(rows)

    def _read(self, op: str, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """The rows of one query; an SQLite error raises SpoolError naming ``op``."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(op, _kind(exc), str(exc)) from None

    def peek(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` entries, oldest first; they stay until ``delete``."""
        rows = self._read("peek", f"SELECT id, {_COLUMNS} FROM spool ORDER BY id LIMIT ?", (limit,))
        return [Entry(*row) for row in rows]

    def delete(self, ids: Iterable[int]) -> None:
        """Drop entries the cloud has acknowledged; unknown ids are ignored.

        On a full disk the WAL is checkpointed (which frees its space) and the
        delete retried in small transactions; if that fails too, SpoolError is
        raised and the entries stay (they are republished: duplicates, not loss)."""
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            try:
                self._delete(ids, _CHUNK * 1000)
            except SpoolError as exc:
                if exc.kind != "full":
                    raise
                self._checkpoint()
                self._delete(ids, 50)

    def _delete(self, ids: list[int], per_transaction: int) -> None:
        for start in range(0, len(ids), per_transaction):
            part = ids[start : start + per_transaction]

            def body(part: list[int] = part) -> tuple[int, int]:
                removed = freed = 0
                for first in range(0, len(part), _CHUNK):
                    chunk = part[first : first + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    sizes = self._db.execute(
                        f"DELETE FROM spool WHERE id IN ({marks}) RETURNING {_SIZE}", chunk
                    ).fetchall()
                    removed += len(sizes)
                    freed += sum(size for (size,) in sizes)
                return removed, freed

            removed, freed = self._write("delete", body)
            self._depth -= removed
            self._bytes -= freed

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # best effort: the caller's retry reports what still fails
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def compact(self) -> None:
        """Give space back: free pages to the file system, WAL checkpointed and truncated.

        Called when a drain has emptied the spool; cheap when there is nothing to do."""
        with self._lock:
            try:
                if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0 and not self._depth:
                    # a file from before schema 1: switch it to incremental (VACUUM of an empty spool is cheap)
                    self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    self._db.execute("VACUUM")
                # executescript steps the pragma to completion (execute() frees a single page)
                self._db.executescript("PRAGMA incremental_vacuum;")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError("compact", _kind(exc), str(exc)) from None

    def disk_bytes(self) -> int:
        """Bytes the spool's files take now (database + WAL), for the docs' bound and tests."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- quarantine ----------------------------------------------------------------------

    def quarantine(self, entry_id: int, reason: int) -> bool:
        """Move one spooled entry to the quarantine (one transaction); False if it is gone.

        The quarantine holds at most ``max_bytes // 10``: beyond that its oldest messages
        are dropped (counted in ``quarantine_dropped``), so refusals cannot fill the disk."""
        with self._lock:
            def move() -> tuple[int, int, int]:
                moved = self._db.execute(
                    f"INSERT INTO quarantine ({_COLUMNS}, quarantined, reason)"
                    f" SELECT {_COLUMNS}, ?, ? FROM spool WHERE id = ?", (time.time(), reason, entry_id)).rowcount
                if not moved:
                    return 0, 0, 0
                size = self._db.execute(f"DELETE FROM spool WHERE id = ? RETURNING {_SIZE}",
                                        (entry_id,)).fetchone()[0]
                dropped = dropped_bytes = 0
                total = self._qbytes + size
                for qid, qsize in self._db.execute(f"SELECT id, {_SIZE} FROM quarantine ORDER BY id").fetchall():
                    if total <= self.max_bytes // 10:
                        break
                    self._db.execute("DELETE FROM quarantine WHERE id = ?", (qid,))
                    total -= qsize
                    dropped += 1
                    dropped_bytes += qsize
                return size, dropped, dropped_bytes

            size, dropped, dropped_bytes = self._write("quarantine", move)
            if not size:
                return False
            self._depth -= 1
            self._bytes -= size
            self._quarantined += 1 - dropped
            self._qbytes += size - dropped_bytes
            self.quarantine_dropped += dropped
            return True

    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        """The oldest ``limit`` quarantined messages."""
        rows = self._read("quarantine",
                          f"SELECT id, {_COLUMNS}, quarantined, reason FROM quarantine ORDER BY id LIMIT ?", (limit,))
        return [Quarantined(*row) for row in rows]

    def resend(self, ids: Iterable[int] | None = None) -> int:
        """Move quarantined messages (all, or ``ids``) back to the end of the spool; how many moved."""
        with self._lock:
            where, args = _which(ids)

            def body() -> list[Any]:
                rows = self._db.execute(
                    f"DELETE FROM quarantine {where} RETURNING {_COLUMNS}", args).fetchall()
                # (payload + topic + properties moves from the quarantine to the spool: max_bytes holds)
                rows.sort(key=lambda r: r[5])  # oldest first, as they were spooled
                self._db.executemany(f"INSERT INTO spool ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)
                return rows

            rows = self._write("resend", body)
            moved = sum(_size(r[1], r[2], r[4]) for r in rows)
            self._quarantined -= len(rows)
            self._qbytes -= moved
            self._depth += len(rows)
            self._bytes += moved
            return len(rows)

    def purge(self, ids: Iterable[int] | None = None) -> int:
        """Delete quarantined messages (all, or ``ids``) for good; how many went."""
        with self._lock:
            where, args = _which(ids)
            sizes = self._write("purge", lambda: self._db.execute(
                f"DELETE FROM quarantine {where} RETURNING {_SIZE}", args).fetchall())
            self._quarantined -= len(sizes)
            self._qbytes -= sum(size for (size,) in sizes)
            return len(sizes)

    def close(self) -> None:
        """Close the connection; the last close also checkpoints and removes the WAL."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def refresh(self) -> None:
        """Recount the quarantine (``gateway spool purge`` may have changed it under us)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._quarantined, self._qbytes = self._db.execute(
                f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM quarantine").fetchone()

    # Kept last in the class body so that, for readers and type checkers, ``bytes``
    # in the annotations above is still the builtin type.
    @property
    def depth(self) -> int:
        """Number of entries waiting."""
        return self._depth

    @property
    def quarantine_depth(self) -> int:
        """Number of quarantined messages."""
        return self._quarantined

    @property
    def bytes(self) -> int:
        """Bytes of payload + topic + properties waiting (what max_bytes bounds)."""
        return self._bytes


def _which(ids: Iterable[int] | None) -> tuple[str, list[int]]:
    if ids is None:
        return "", []
    ids = [int(i) for i in ids]
    if len(ids) > _CHUNK:
        raise ValueError(f"at most {_CHUNK} ids at a time")
    return f"WHERE id IN ({','.join('?' * len(ids))})", ids
