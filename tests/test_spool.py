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

from gateway.spool import SCHEMA_VERSION, WAL_LIMIT, WAL_PAGES, Entry, Spool, SpoolError

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
    assert next(e.id for e in spool.peek(10)) == ids[2]
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
        "quarantine", "quarantined", "resend", "purge", "quarantine_depth", "refresh",
    }


# -- failures, schema, quarantine, disk use (issue 10, items 1 and 9) --------------------------


def _fill_until_full(spool: Spool, payload: bytes = b"x" * 300) -> int:
    """Append one-message batches until SQLite's max_page_count makes the file "full"."""
    for n in range(10_000):
        try:
            spool.append_many([("d", f"t/{n}", payload, 1, b"")])
        except SpoolError as exc:
            assert exc.kind == "full" and exc.op == "append"
            return n
    raise AssertionError("never full")


def test_full_file_raises_spool_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, BIG)
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count={pages + 3}")  # a portable "disk full"
    stored = _fill_until_full(spool)
    assert stored > 0
    before = (spool.depth, spool.bytes)
    with pytest.raises(SpoolError) as caught:  # a whole batch: all or nothing, never half
        spool.append_many([("d", "t/x", b"y" * 300, 1, b"")] * 50)
    assert caught.value.kind == "full" and "rollback" not in str(caught.value)
    with pytest.raises(SpoolError):
        spool.append("d", "t/x", b"y" * 3000, 1)
    assert (spool.depth, spool.bytes) == before
    assert not spool._db.in_transaction
    rows = rows_in_db(path)
    assert len(rows) == stored and expected_bytes(rows) == spool.bytes
    # Space comes back (a delete frees pages): writing works again, with no reopen.
    spool.delete([r[0] for r in rows[: stored // 2]])
    assert spool.append_many([("d", "t/again", b"z" * 300, 1, b"")]) == 1
    assert spool.depth == len(rows_in_db(path))
    spool.close()


def test_canary_never_in_a_spool_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", BIG)
    spool._db.execute(f"PRAGMA max_page_count={spool._db.execute('PRAGMA page_count').fetchone()[0]}")
    canary = "4111111111111111"
    with pytest.raises(SpoolError) as caught:
        spool.append_many([("d", f"t/{canary}", canary.encode() * 2000, 1, b"")])
    assert canary not in str(caught.value)
    spool.close()


def test_schema_version_recorded_old_files_migrated_newer_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Spool(path, BIG).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    old = tmp_path / "old.db"  # a file written before versions were recorded (user_version 0)
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, topic TEXT"
                   " NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, properties BLOB NOT NULL,"
                   " created REAL NOT NULL)")
        db.execute("INSERT INTO spool (device, topic, payload, qos, properties, created)"
                   " VALUES ('p', 't', x'01', 1, x'', 0)")
    spool = Spool(old, BIG)
    assert spool.depth == 1 and spool.quarantine_depth == 0
    spool.delete([e.id for e in spool.peek(1)])
    spool.compact()  # an old file is switched to incremental auto-vacuum once it is empty
    assert spool._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    spool.close()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    future = tmp_path / "future.db"
    with sqlite3.connect(future) as db:
        db.execute("PRAGMA user_version=7")
    with pytest.raises(SpoolError) as caught:
        Spool(future, BIG)
    assert caught.value.kind == "schema" and "version 7" in str(caught.value) and str(future) in str(caught.value)


def test_quarantine_resend_purge_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, BIG)
    ids = [spool.append("pol", f"cloud/{i}/alarm", b"m%d" % i, 1, b"p") for i in range(4)]
    assert spool.quarantine(ids[1], 0x87) and spool.quarantine(ids[2], 0x97)
    assert not spool.quarantine(ids[1], 0x87)  # already moved
    assert (spool.depth, spool.quarantine_depth) == (2, 2)
    assert spool.bytes == expected_bytes(rows_in_db(path))
    q = spool.quarantined()
    assert [(x.topic, x.payload, x.reason, x.device) for x in q] == [
        ("cloud/1/alarm", b"m1", 0x87, "pol"), ("cloud/2/alarm", b"m2", 0x97, "pol")]
    assert spool.purge([q[1].id]) == 1 and spool.quarantine_depth == 1
    assert spool.resend() == 1  # back at the end of the spool, as spooled
    assert [r[2] for r in rows_in_db(path)] == ["cloud/0/alarm", "cloud/3/alarm", "cloud/1/alarm"]
    assert (spool.depth, spool.quarantine_depth) == (3, 0)
    assert spool.bytes == expected_bytes(rows_in_db(path))
    spool.close()


def test_one_gateway_per_spool_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = Spool(path, BIG)
    with pytest.raises(SpoolError) as caught:
        Spool(path, BIG, lock_wait_s=0.3)
    assert caught.value.kind == "busy"
    reader = Spool(path, BIG, exclusive=False)  # `gateway spool list` while the gateway runs
    assert reader.depth == 0
    reader.close()
    first.close()
    Spool(path, BIG).close()  # the lock went with the first


def test_drained_spool_gives_its_space_back_and_the_wal_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, 64 * BIG)
    empty = spool.disk_bytes()
    peak_wal = 0
    for batch in range(40):  # 4 MB through the spool in 100 KB transactions
        spool.append_many([("d", f"t/{batch}/{i}", os.urandom(1000), 1, b"") for i in range(100)])
        peak_wal = max(peak_wal, os.stat(f"{path}-wal").st_size)
    assert spool.disk_bytes() > 4_000_000
    assert peak_wal <= WAL_LIMIT + WAL_PAGES * 4096 + 200_000  # one checkpoint interval plus one transaction
    spool.delete([e.id for e in spool.peek(10_000)])
    spool.compact()
    assert spool.depth == 0 and spool.disk_bytes() < empty + 100_000, (empty, spool.disk_bytes())
    spool.close()


async def test_uplink_holds_on_a_failing_spool_then_resumes_by_itself(tmp_path: Path) -> None:
    """Item 1 at the uplink: a spool write that fails acknowledges nothing it did not store,
    makes /readyz not ready, is counted, and is retried on a timer until space returns."""
    from gateway.service.config import Endpoint, Reconnect
    from gateway.service.uplink import Delivery, Uplink, provenance
    from gateway.telemetry import Metrics

    spool = Spool(tmp_path / "s.db", BIG)
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count={pages + 2}")
    metrics = Metrics()
    up = Uplink(Endpoint(url="mqtt://127.0.0.1:1"), "t", spool, metrics, Reconnect(min_s=0.05, max_s=0.2))
    acked: list[int] = []
    prov = provenance([("policy", "p")], None)
    for i in range(400):  # the cloud is away: everything goes to the spool
        up.submit(Delivery("p", f"cloud/{i}", b"x" * 200, 1, prov, lambda i=i: acked.append(i)))
    await asyncio.sleep(0)  # the loop turn's flush
    assert up.spool_writable is False and 0 < len(acked) < 400
    assert acked == list(range(len(acked)))  # acknowledged exactly what was stored, in order
    assert spool.depth == len(acked) == len(rows_in_db(tmp_path / "s.db"))
    ok, detail = up.readiness()
    assert not ok and "spool: cannot write (full)" in detail
    assert metrics.spool_errors.labels("append")._value.get() >= 1
    spool._db.execute("PRAGMA max_page_count=1000000")  # space returns; no new traffic comes
    for _ in range(200):
        if len(acked) == 400:
            break
        await asyncio.sleep(0.05)
    assert acked == list(range(400)) and up.spool_writable and up.readiness()[0]
    assert spool.depth == 400
    await up.close(0)
    spool.close()


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 40), st.integers(50, 3000)),  # a batch: count, payload size
            st.tuples(st.just("del"), st.integers(0, 60), st.none()),
            st.tuples(st.just("quarantine"), st.integers(0, 3), st.sampled_from([0x80, 0x87, 0x97])),
            st.tuples(st.just("pages"), st.integers(0, 12), st.none()),  # headroom: 0 = full now
        ),
        max_size=30,
    )
)
def test_counters_and_order_survive_any_sequence_of_full_disks(ops: list[tuple[str, object, object]]) -> None:
    """Whatever fails, a failure is a SpoolError, nothing half happens, counters equal the file,
    and what is stored is a prefix of what was offered, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        spool = Spool(path, max_bytes=BIG)
        offered = 0
        stored: list[str] = []
        for op, a, b in ops:
            try:
                if op == "add":
                    batch = [("d", f"t/{offered + i}", b"x" * b, 1, b"") for i in range(a)]  # type: ignore[operator]
                    n = spool.append_many(batch)
                    stored += [r[1] for r in batch[:n]]
                    offered += a  # type: ignore[operator]
                elif op == "del":
                    spool.delete(e.id for e in spool.peek(a))  # type: ignore[arg-type]
                elif op == "quarantine":
                    for e in spool.peek(a):  # type: ignore[arg-type]
                        spool.quarantine(e.id, b)  # type: ignore[arg-type]
                else:
                    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
                    spool._db.execute(f"PRAGMA max_page_count={pages + a}")  # type: ignore[operator]
            except SpoolError as exc:
                assert exc.kind == "full"
            assert not spool._db.in_transaction
            rows = rows_in_db(path)
            assert (spool.depth, spool.bytes) == (len(rows), expected_bytes(rows))
            with sqlite3.connect(path) as db:
                assert spool.quarantine_depth == db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        topics = [r[2] for r in rows_in_db(path)]
        assert topics == [t for t in stored if t in set(topics)]  # the survivors, still in order
        spool.close()


def test_a_new_owner_waits_for_the_previous_one_to_let_go(tmp_path: Path) -> None:
    """A restarted worker may start while its predecessor still exits: it waits for the lock."""
    import threading

    path = tmp_path / "s.db"
    first = Spool(path, BIG)
    first.append("d", "t", b"kept", 1)
    threading.Timer(0.3, first.close).start()
    second = Spool(path, BIG, lock_wait_s=10)
    assert [e.payload for e in second.peek(5)] == [b"kept"]
    second.close()


def test_quarantine_counts_against_max_bytes_and_keeps_to_a_tenth(tmp_path: Path) -> None:
    """Refusals cannot fill the disk: the quarantine is part of max_bytes and holds at most a
    tenth of it, dropping its oldest (counted) beyond that."""
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=BIG)
    ids = [spool.append("p", "cloud/x/alarm", bytes([i % 256]) * 20_000, 1) for i in range(12)]  # 20,013 bytes each
    for row_id in ids:
        assert spool.quarantine(row_id, 0x87)
    with sqlite3.connect(path) as db:
        kept = db.execute("SELECT id, length(payload) + length(CAST(topic AS BLOB)) + length(properties)"
                          " FROM quarantine ORDER BY id").fetchall()
    assert sum(size for _, size in kept) <= BIG // 10 < sum(size for _, size in kept) + 20_013
    assert spool.quarantine_dropped == 12 - len(kept) > 0
    assert [q.id for q in spool.quarantined()] == [i for i, _ in kept]  # the newest are the ones kept
    assert spool.quarantine_depth == len(kept) and spool.depth == 0
    room = BIG - sum(size for _, size in kept)  # what the spool itself may still take
    assert spool.append("p", "t", b"x" * (room - 1), 1) is not None
    assert spool.append("p", "t", b"xx", 1) is None
    spool.close()
