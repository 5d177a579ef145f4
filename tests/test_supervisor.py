"""``gateway run --workers N`` (docs/operations.md, Several workers): a config exit stops the supervisor
with 78 instead of restarting for ever; restarts back off, start over after a healthy run, and are
logged as JSON events and exported as ``gateway_worker_restarts_total``; N workers' lines never splice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import msgspec
import pytest
from brokers import Mosquitto
from service_harness import POLICY, Gateway, Publisher, Sink, wait_until

FAST = "[supervisor]\nrestart_min_s = 0.2\nrestart_max_s = 5\nhealthy_after_s = {healthy}\n"


def _events(gw: Gateway, name: str) -> list[dict]:
    return [e for e in gw.events() if e.get("event") == name]


def _worker_pid(gw: Gateway, i: int) -> int:
    """The current pid of worker ``i``, from the supervisor's own events."""
    restarted = [e for e in _events(gw, "worker_restarted") if e["worker"] == i]
    if restarted:
        return restarted[-1]["worker_pid"]
    return _events(gw, "supervisor_started")[0]["worker_pids"][i]


def _broken_policy(path: Path) -> None:
    """The policy with one expected value of an inline test changed: it fails ``gateway check``."""
    text = POLICY.read_text()
    broken = text.replace('expect_topic = "', 'expect_topic = "wrong-', 1)
    assert broken != text
    path.write_text(broken)


def test_a_broken_policy_stops_the_supervisor_with_78(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    policy = tmp_path / "policy.toml"
    _broken_policy(policy)
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[policy], workers=2)
    try:
        gw.start(wait_ready=False)
        assert gw.proc is not None
        assert gw.proc.wait(timeout=30) == 78
        (event,) = _events(gw, "startup_failed")
        assert event["key"] == "policies" and "inline test" in event["error"]
        assert not _events(gw, "worker_restarted")
    finally:
        gw.close()


@pytest.mark.slow
def test_a_worker_exiting_78_stops_all_workers_with_78(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    """The policy breaks while running; the next worker start fails the check: no restart loop."""
    local, cloud = broker_pair
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text())
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[policy], workers=2, extra=FAST.format(healthy=60))
    try:
        gw.start()
        survivor = _worker_pid(gw, 0)
        _broken_policy(policy)
        os.kill(_worker_pid(gw, 1), signal.SIGKILL)
        assert gw.proc is not None
        assert gw.proc.wait(timeout=60) == 78
        (config_error,) = _events(gw, "worker_config_error")
        assert config_error["worker"] == 1 and config_error["code"] == 78
        assert len(_events(gw, "worker_restarted")) == 1  # the one restart that found the broken policy
        wait_until(lambda: not os.path.exists(f"/proc/{survivor}"), 30, "worker 0 stopped too")
    finally:
        gw.close()


@pytest.mark.slow
def test_restarts_back_off_start_over_after_a_healthy_run_and_are_counted(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = broker_pair
    healthy = 4.0
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, workers=2, extra=FAST.format(healthy=healthy))
    sink = Sink(cloud.url)
    pub = Publisher(local.url)

    def kill_worker_1_and_wait_restart(n: int) -> dict:
        os.kill(_worker_pid(gw, 1), signal.SIGKILL)
        wait_until(lambda: len(_events(gw, "worker_restarted")) >= n, 30, f"restart {n}")
        return _events(gw, "worker_exited")[n - 1]

    try:
        gw.start()
        time.sleep(healthy + 0.5)  # the condition is the duration itself: a run longer than healthy_after_s
        first = kill_worker_1_and_wait_restart(1)
        second = kill_worker_1_and_wait_restart(2)  # at once: a failure in a row
        assert (first["restart_in_s"], first["failures_in_a_row"]) == (0.2, 1)
        assert (second["restart_in_s"], second["failures_in_a_row"]) == (0.4, 2)
        assert second["ran_s"] < healthy and first["code"] == second["code"] == 128 + signal.SIGKILL
        wait_until(lambda: gw.ready(), 30, "worker 1 ready again")
        restarted_at = time.monotonic()
        time.sleep(max(0.0, healthy + 0.5 - (time.monotonic() - restarted_at)))
        third = kill_worker_1_and_wait_restart(3)
        assert third["ran_s"] >= healthy and (third["restart_in_s"], third["failures_in_a_row"]) == (0.2, 1)
        wait_until(lambda: gw.ready(), 30, "worker 1 ready after the third restart")
        assert gw.metric("gateway_worker_restarts_total", worker=1) == 3
        assert gw.metric("gateway_worker_restarts_total", worker=0) == 0
        assert [e["restarts"] for e in _events(gw, "worker_restarted")] == [1, 2, 3]
        # and the restarted worker still works
        pub.publish_all([(f"site/dev-{i}/telemetry", msgspec.json.encode({"device_id": f"dev-{i}", "seq": 0}))
                         for i in range(20)])
        sink.wait_for(20, 30)
        assert gw.stop() == 0
    finally:
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.slow
def test_two_workers_write_whole_json_lines(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    """Traffic, then a burst of SIGHUPs: both workers log reloads at the same moments into one stderr."""
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, workers=2)
    sink = Sink(cloud.url)
    pub = Publisher(local.url)
    try:
        gw.start()
        pub.publish_all([(f"site/dev-{i % 10}/telemetry", msgspec.json.encode({"device_id": f"dev-{i % 10}",
                                                                                 "seq": i // 10}))
                         for i in range(2000)], timeout=120)
        sink.wait_for(2000, 120)
        for _ in range(20):
            gw.signal(signal.SIGHUP)
            time.sleep(0.05)

        def reloads(worker: int) -> int:
            return sum(1 for e in gw.events() if e["worker"] == worker and "reload" in e["event"])

        wait_until(lambda: reloads(0) >= 3 and reloads(1) >= 3, 60, "both workers logged reloads")
        assert gw.stop() == 0
        events = gw.events()
        assert len({e["pid"] for e in events}) == 3  # the supervisor and two workers
        assert {e["worker"] for e in events} == {0, 1, "supervisor"}
    finally:
        pub.close()
        sink.close()
        gw.close()


def test_sigterm_while_a_worker_waits_for_its_restart_exits_0(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    """The dead worker was logged when it died; a clean stop of the rest is still a clean stop."""
    local, cloud = broker_pair
    slow = "[supervisor]\nrestart_min_s = 60\nrestart_max_s = 60\n"
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, workers=2, extra=slow)
    try:
        gw.start()
        os.kill(_worker_pid(gw, 1), signal.SIGKILL)
        wait_until(lambda: bool(_events(gw, "worker_exited")), 20, "worker_exited")
        assert _events(gw, "worker_exited")[0]["restart_in_s"] == 60
        assert gw.stop() == 0
        assert not _events(gw, "worker_restarted")
        assert _events(gw, "supervisor_stopped")[0]["status"] == 0
    finally:
        gw.close()
