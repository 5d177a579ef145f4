"""Spool scenarios on real brokers (issue 10, items 1, 9, 10): a full disk, a cloud that
refuses one topic, a drain that must not wait for traffic.

Each test asserts on what the cloud broker delivered, /readyz, /metrics and the
``gateway spool`` command, as an operator would see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from brokers import Mosquitto
from service_harness import GATEWAY, POLICY, Gateway, Publisher, Sink, wait_until

ALARM_POLICY = """
[policy]
name = "service-alarm"
version = "1.0.0"
description = "alarm test traffic: the topic the test cloud refuses"
device = "{device}"

[route]
topics = ["site/{device}/alarm"]
upstream = "cloud/{device}/alarm"

[route.capture.device]
op = "pseudonymise"
domain = "device"

[[field]]
path = "seq"
op = "keep"
type = "integer"
"""

# Anonymous clients may do anything but publish alarms: Mosquitto answers those with PUBACK 0x87.
CLOUD_ACL = "topic readwrite #\ntopic deny cloud/+/alarm\n"


def locations(n: int, devices: int = 20, tag: str = "") -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        dev = f"dev{tag}-{i % devices:03d}"
        body = {"device_id": dev, "seq": i // devices, "lat": 12.97, "lon": 77.59, "ip": "203.0.113.9",
                "upi_ref": "400000000001", "email": "a@example.com", "note": "ok"}
        out.append((f"site/{dev}/telemetry", msgspec.json.encode(body)))
    return out


def distinct(sink: Sink, prefix: str = "cloud/") -> set[tuple[str, bytes]]:
    return {(m.topic, m.payload) for m in sink.snapshot() if m.topic.startswith(prefix) and "/alarm" not in m.topic}


def wait_distinct(sink: Sink, n: int, timeout: float, gw: Gateway) -> None:
    try:
        wait_until(lambda: len(distinct(sink)) >= n, timeout, f"{n} distinct messages at the sink", 0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (have {len(distinct(sink))})\n{gw.log_tail(40)}") from None


def spool_cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATEWAY, "spool", *args, "--config", str(gw.config)], capture_output=True, text=True,
                          timeout=60)


def refusing_cloud(tmp_path: Path) -> Mosquitto:
    acl = tmp_path / "cloud.acl"
    acl.write_text(CLOUD_ACL)
    return Mosquitto(tmp_path / "cloud-acl", name="cloud-acl", extra=f"acl_file {acl}\n")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 600 KiB tmpfs (smaller than the spool's 1 MiB max_bytes): the disk fills first."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the test runs as root on the project's machines)")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def gateway_on(disk: Path, tmp_path: Path, local: Mosquitto, cloud: Mosquitto) -> Gateway:
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, spool_max_bytes=1024 * 1024)
    gw.spool_path = disk / "spool.db"
    gw.config.write_text(gw.config.read_text().replace(str(tmp_path / "gw" / "spool.db"), str(gw.spool_path)))
    return gw


@pytest.mark.slow
def test_full_tmpfs_spool_holds_then_delivers_everything_without_restart(
        tmp_path: Path, broker_pair, small_disk: Path) -> None:
    """Item 1: a 600 KiB tmpfs fills up while the cloud is away; nothing is lost and the
    gateway resumes by itself (no restart) once the cloud is back and the spool drains."""
    local, cloud = broker_pair
    gw = sink = pub = None
    try:
        gw = gateway_on(small_disk, tmp_path, local, cloud).start()
        sink = Sink(cloud.url)
        pub = Publisher(local.url)
        cloud.stop()
        wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 20, "the gateway saw the cloud go")
        sent = locations(3000)
        pub.publish_all(sent, timeout=120)  # the site broker took them all; the gateway holds back what it cannot store
        wait_until(lambda: gw.metric("gateway_spool_errors_total", op="append") >= 1, 60,
                   f"a failed spool write on the full disk\n{gw.log_tail()}")
        status, body = gw.http("/readyz")
        assert status == 503 and "spool: cannot write (full)" in body, (status, body)
        assert gw.proc is not None and gw.proc.poll() is None
        cloud.start()
        wait_distinct(sink, 3000, 180, gw)
        got = distinct(sink)
        assert len(got) == 3000
        wait_until(lambda: gw.http("/readyz")[0] == 200, 60, f"/readyz 200 again\n{gw.log_tail()}")
        wait_until(lambda: gw.metric("gateway_spool_depth") == 0, 60, "an empty spool")
        text = gw.log_text()
        assert "cannot rollback" not in text and "Traceback" not in text
        events = [e.get("event") for e in json_lines(text)]
        assert "spool_error" in events and "spool_writable_again" in events
        t0 = time.monotonic()
        assert gw.stop(timeout=30) == 0
        assert time.monotonic() - t0 < 5 + 10  # shutdown_timeout_s (5) plus process teardown
    finally:
        for c in (pub, sink):
            if c is not None:
                c.close()
        if gw is not None:
            gw.close()


@pytest.mark.slow
def test_sigterm_while_the_spool_disk_is_full_exits_in_time_and_loses_nothing(
        tmp_path: Path, broker_pair, small_disk: Path) -> None:
    """SIGTERM in the failing state: exit 0 within shutdown_timeout_s (5 here) plus teardown;
    what was held is redelivered to the next run, which delivers all 3,000."""
    local, cloud = broker_pair
    gw = gateway_on(small_disk, tmp_path, local, cloud).start()
    sink = Sink(cloud.url)
    pub = Publisher(local.url)
    try:
        cloud.stop()
        wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 20, "the gateway saw the cloud go")
        pub.publish_all(locations(3000, tag="t"), timeout=120)
        wait_until(lambda: gw.http("/readyz")[0] == 503, 60, f"/readyz 503 on the full disk\n{gw.log_tail()}")
        t0 = time.monotonic()
        assert gw.stop(timeout=30) == 0
        assert time.monotonic() - t0 < 5 + 5, gw.log_tail()
        cloud.start()
        gw.start()
        wait_distinct(sink, 3000, 180, gw)
        assert len(distinct(sink)) == 3000
    finally:
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.slow
def test_one_refused_alarm_does_not_block_3000_locations(tmp_path: Path) -> None:
    """Item 9: the cloud refuses the alarm topic (ACL, PUBACK 0x87); the locations behind it all
    arrive, the alarm ends in the quarantine, is counted, logged once without device ids, shown on
    /readyz, and can be listed and purged with `gateway spool`."""
    alarm_policy = tmp_path / "alarm.toml"
    alarm_policy.write_text(ALARM_POLICY)
    local = Mosquitto(tmp_path / "local", name="local")
    cloud = refusing_cloud(tmp_path)
    with local, cloud:
        gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=(POLICY, alarm_policy)).start()
        sink = Sink(cloud.url)
        pub = Publisher(local.url)
        try:
            pub.publish_all([("site/devX-001/alarm", b'{"seq": 1}')])
            pub.publish_all(locations(3000), timeout=120)
            wait_distinct(sink, 3000, 120, gw)
            assert len(distinct(sink)) == 3000
            assert not [m for m in sink.snapshot() if "/alarm" in m.topic]
            wait_until(lambda: gw.metric("gateway_spool_quarantined") == 1, 60, f"one quarantined\n{gw.log_tail()}")
            assert gw.metric("gateway_cloud_refused_total", reason="0x87") >= 3
            status, body = gw.http("/readyz")
            assert status == 200 and "quarantine: 1 message(s)" in body, body
            logged = [e for e in json_lines(gw.log_text()) if e.get("event") == "cloud_refused_quarantined"]
            assert len(logged) == 1 and logged[0]["reason"] == "0x87" and logged[0]["topic"] == "cloud/+/alarm"
            assert "devX" not in gw.log_text()
            listed = spool_cli(gw, "list", "--json")  # while the gateway runs
            assert listed.returncode == 0, listed.stderr
            (row,) = json_lines(listed.stdout)
            assert row["reason"] == "0x87" and row["policy"] == "service-alarm" and row["topic"].endswith("/alarm")
            assert row["topic"] != "cloud/devX-001/alarm"  # minimised: the pseudonym, not the device id
            resend = spool_cli(gw, "resend", "--all")  # the running gateway owns the spool
            assert resend.returncode == 1 and "stop the gateway first" in resend.stderr
            purged = spool_cli(gw, "purge", "--id", str(row["id"]))
            assert purged.returncode == 0 and "purged 1" in purged.stderr
            wait_until(lambda: "quarantine" not in gw.http("/readyz")[1], 20, "/readyz without the quarantine line")
        finally:
            pub.close()
            sink.close()
            gw.close()


@pytest.mark.slow
def test_backlog_drains_after_a_failed_batch_with_no_new_traffic(tmp_path: Path) -> None:
    """Item 10: a backlog is spooled while the cloud is away; its first drain batch fails (the
    cloud refuses the alarm at its head); nothing more is published, and every message still
    arrives (the drain retries on its own timer). Then `gateway spool resend` after a stop
    puts the alarm back, and the refusal repeats without blocking anything."""
    alarm_policy = tmp_path / "alarm.toml"
    alarm_policy.write_text(ALARM_POLICY)
    local = Mosquitto(tmp_path / "local", name="local")
    cloud = refusing_cloud(tmp_path)
    with local, cloud:
        gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=(POLICY, alarm_policy)).start()
        sink = Sink(cloud.url)
        pub = Publisher(local.url)
        try:
            cloud.stop()
            wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 20, "the gateway saw the cloud go")
            pub.publish_all([("site/devY-001/alarm", b'{"seq": 1}')])
            pub.publish_all(locations(2000, tag="b"), timeout=120)
            wait_until(lambda: gw.metric("gateway_spool_depth") == 2001, 60, f"2001 spooled\n{gw.log_tail()}")
            cloud.start()  # nothing is published from here on
            # Arrival is the cloud broker's PUBACK for each one (a sink would race its own reconnection).
            wait_until(lambda: gw.metric("gateway_uplink_acked_total") >= 2000, 120,
                       f"2000 acknowledged by the cloud\n{gw.log_tail()}")
            wait_until(lambda: gw.metric("gateway_spool_depth") == 0, 60, "an empty spool")
            assert gw.metric("gateway_spool_quarantined") == 1
            assert gw.stop() == 0
            resent = spool_cli(gw, "resend", "--all")
            assert resent.returncode == 0 and "moved 1" in resent.stderr, resent.stderr
            gw.start()
            wait_until(lambda: gw.metric("gateway_cloud_refused_total", reason="0x87") >= 3, 60, "refused again")
            wait_until(lambda: gw.metric("gateway_spool_quarantined") == 1, 60, "quarantined again")
        finally:
            pub.close()
            sink.close()
            gw.close()


@pytest.mark.slow
def test_quarantine_shows_on_the_supervisors_readyz(tmp_path: Path) -> None:
    """With --workers 2, the supervisor's /readyz carries each worker's detail lines."""
    alarm_policy = tmp_path / "alarm.toml"
    alarm_policy.write_text(ALARM_POLICY)
    local = Mosquitto(tmp_path / "local", name="local")
    cloud = refusing_cloud(tmp_path)
    with local, cloud:
        gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=(POLICY, alarm_policy), workers=2).start()
        pub = Publisher(local.url)
        try:
            pub.publish_all([("site/devZ-001/alarm", b'{"seq": 1}')])
            wait_until(lambda: gw.metric("gateway_spool_quarantined") == 1, 60, f"one quarantined\n{gw.log_tail()}")
            status, body = gw.http("/readyz")
            assert status == 200 and "quarantine: 1 message(s) refused by the cloud" in body, body
            assert body.startswith("ready\nworker ")
        finally:
            pub.close()
            gw.close()
