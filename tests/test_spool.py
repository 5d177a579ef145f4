"""The store-and-forward spool: order, bounds, counters, file mode, crash durability.

Every test runs against a real SQLite file under tmp_path. Expected counters are
recomputed here from the rows themselves, not read back from the Spool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.spool import Entry, Spool

BIG = 1 << 20


def rows_in_db(path: Path) -> list[tuple[int, str, str, bytes, int, bytes]]:
    """Rows as SQLite itself sees them, through a connection of our own."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT id, device, topic, payload, qos, properties FROM spool ORDER BY id"
        ).fetchall()


def expected_bytes(rows: list[tuple[int, str, str, bytes, int, bytes]]) -> int:
    return sum(len(payload) + len(topic.encode()) + len(props) for _, _, topic, payload, _, props in rows)


def test_order_kept_across_devices_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, BIG)
    sent = [(f"dev{i % 3}", f"site/a/{i}", f"m{i}".encode(), i % 2, bytes([i])) for i in range(6)]
    for record in sent[:3]:
        assert spool.append(*record) is not None
    assert spool.append_many(sent[3:]) == 3
    spool.close()

    spool = Spool(path, BIG)
    got = spool.peek(100)
    assert [(e.device, e.topic, e.payload, e.qos, e.properties) for e in got] == sent
    assert [e.id for e in got] == sorted(e.id for e in got)
    for device in ("dev0", "dev1", "dev2"):  # per-device order, spelled out
        assert [e.payload for e in got if e.device == device] == [
            r[2] for r in sent if r[0] == device
        ]
    assert spool.peek(2) == got[:2]  # peek does not consume
    spool.close()


def test_defaults_and_empty_device(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", BIG)
    row_id = spool.append("", "t", b"\x00\xffbin", 1)
    (entry,) = spool.peek(1)
    assert entry == Entry(row_id, "", "t", b"\x00\xffbin", 1, b"", entry.created) and entry.created > 1.7e9
    spool.close()


def test_full_spool_refuses_counts_and_frees_after_delete(tmp_path: Path) -> None:
    # Each record costs 1 (topic) + 8 (payload) + 1 (properties) = 10 bytes.
    spool = Spool(tmp_path / "s.db", max_bytes=30)
    ids = [spool.append("d", "t", b"12345678", 1, b"p") for _ in range(3)]
    assert None not in ids and spool.bytes == 30 and spool.depth == 3
    assert spool.append("d", "t", b"12345678", 1, b"p") is None
    assert spool.append("d", "t", b"", 0) is None  # 1 byte still exceeds
    assert spool.refused == 2

    spool.delete(ids[:2])
    assert (spool.depth, spool.bytes) == (1, 10)
    # A batch stores the prefix that fits and stops at the first that does not:
    # the 1-byte record after the 25-byte one is not stored ahead of it.
    batch = [("d", "t", b"12345678", 1, b"p"), ("d", "t", b"x" * 24, 1, b""), ("d", "t", b"", 0, b"")]
    assert spool.append_many(batch) == 1
    assert spool.refused == 4
    assert [e.id for e in spool.peek(10)][0] == ids[2]
    spool.close()


def test_unknown_and_repeated_deletes_do_not_skew_counters(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, BIG)
    first = spool.append("d", "t", b"abc", 1)
    spool.append("d", "t", b"defg", 1)
    spool.delete([first, first, 999])
    spool.delete([first])
    spool.delete([])
    rows = rows_in_db(path)
    assert (spool.depth, spool.bytes) == (len(rows), expected_bytes(rows)) == (1, 5)
    spool.close()


def test_large_delete_spans_chunks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", BIG)
    assert spool.append_many([("d", "t", b"x", 1, b"")] * 1200) == 1200
    spool.delete(e.id for e in spool.peek(1100))
    assert (spool.depth, spool.bytes) == (100, 200)
    spool.close()


def test_counters_match_db_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, BIG)
    # Non-ASCII topic: the byte count is of UTF-8, not of characters.
    spool.append_many([("d", f"site/é/{i}", b"p" * i, 1, b"props") for i in range(20)])
    spool.delete(e.id for e in spool.peek(7))
    spool.close()

    rows = rows_in_db(path)
    reopened = Spool(path, BIG)
    assert reopened.depth == len(rows) == 13
    assert reopened.bytes == expected_bytes(rows)
    reopened.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.binary(max_size=40), st.text(max_size=8)),
            st.tuples(st.just("del"), st.integers(0, 5), st.none()),
        ),
        max_size=25,
    )
)
def test_counters_track_any_sequence(ops: list[tuple[str, object, object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        spool = Spool(path, max_bytes=200)
        for op, a, b in ops:
            if op == "add":
                spool.append("d", str(b), a, 1)  # type: ignore[arg-type]
            else:
                spool.delete(e.id for e in spool.peek(a))  # type: ignore[arg-type]
            assert spool.bytes <= 200
        rows = rows_in_db(path)
        assert (spool.depth, spool.bytes) == (len(rows), expected_bytes(rows))
        spool.close()


async def test_shared_by_threads_from_asyncio(tmp_path: Path) -> None:
    """How the service calls it: asyncio.to_thread, many at once, one connection."""
    path = tmp_path / "s.db"
    spool = Spool(path, BIG)
    await asyncio.gather(
        *(asyncio.to_thread(spool.append, f"d{i}", "t", b"x" * i, 1) for i in range(50)),
        *(asyncio.to_thread(spool.append_many, [("b", "t", b"y", 0, b"")] * 10) for _ in range(5)),
    )
    rows = rows_in_db(path)
    assert (spool.depth, spool.bytes) == (len(rows), expected_bytes(rows)) == (100, sum(range(50)) + 150)
    spool.close()


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)  # an existing, too-open file is tightened too
    spool = Spool(path, BIG)
    spool.append("d", "t", b"x", 1)
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    spool.close()


def test_missing_parent_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Spool(tmp_path / "absent" / "s.db", BIG)


def test_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Spool(path, BIG).close()
    with sqlite3.connect(path) as db:  # WAL mode is persistent in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_WRITER = """
import sys
from gateway.spool import Spool
spool = Spool(sys.argv[1], 1 << 30)
i = 0
while True:
    if i % 2:
        spool.append(f"dev{i % 5}", f"t/{i}", b"%d:" % i + bytes(range(256)) * 4, 1, b"p%d" % i)
        i += 1
    else:  # a batch of 3, one transaction
        spool.append_many([(f"dev{j % 5}", f"t/{j}", b"%d:" % j + bytes(range(256)) * 4, 1, b"p%d" % j)
                           for j in range(i, i + 3)])
        i += 3
    print(i, flush=True)
"""


def test_sigkill_mid_write_keeps_every_committed_entry(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    committed = 0
    try:
        while committed < 300:  # the child prints only after a commit returned
            line = proc.stdout.readline()
            assert line, "writer died early"
            committed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)  # while it keeps writing
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    spool = Spool(path, 1 << 30)
    got = spool.peek(1_000_000)
    assert len(got) >= committed  # commits after the last print may be there too
    for i, e in enumerate(got):
        assert (e.device, e.topic, e.qos, e.properties) == (f"dev{i % 5}", f"t/{i}", 1, b"p%d" % i)
        assert e.payload == b"%d:" % i + bytes(range(256)) * 4
    assert [e.id for e in got] == sorted(e.id for e in got)
    assert spool.depth == len(got)
    spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_canary_only_the_minimised_bytes_reach_disk(tmp_path: Path) -> None:
    """The spool takes finished bytes and stores exactly those, nothing derived."""
    raw_pan, raw_name = "4111111111111111", "Amit Sharma"  # in the device's message
    minimised = b'{"card":"411111******1111","user":"u_3f9a2c","amount":120}'
    path = tmp_path / "s.db"
    spool = Spool(path, BIG)
    row_id = spool.append("u_3f9a2c", "cloud/site1/pay", minimised, 1, b"\x26\x00\x01k\x00\x01v")
    (entry,) = spool.peek(10)
    assert entry == Entry(row_id, "u_3f9a2c", "cloud/site1/pay", minimised, 1, b"\x26\x00\x01k\x00\x01v", entry.created)

    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert minimised in on_disk
    for canary in (raw_pan, raw_name):
        assert canary.encode() not in on_disk
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        columns = [r[1] for r in db.execute("PRAGMA table_info(spool)")]
    assert sorted(tables) == ["quarantine", "spool", "sqlite_sequence"]
    assert columns == ["id", "device", "topic", "payload", "qos", "properties", "created"]
    spool.close()
    # No way in but finished bytes: the public surface is exactly this.
    assert {n for n in dir(Spool) if not n.startswith("_")} == {
        "append", "append_many", "peek", "delete", "close", "depth", "bytes", "compact", "disk_bytes",
        "quarantine", "quarantine_record", "quarantined", "resend", "purge", "quarantine_depth", "refresh",
    }
