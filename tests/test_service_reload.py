"""SIGHUP re-reads config.toml (issue 10 item 8): what can change live changes; what needs
a restart is refused, naming the key, and the running config stays in force."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import msgspec
from brokers import Mosquitto
from service_harness import GATEWAY, POLICY, ROOT, Gateway, Publisher, Sink, wait_until

from gateway.service.config import load_config, restart_keys

MSG = {"device_id": "dev-1", "seq": 1, "lat": 12.971598, "lon": 77.594562}


def test_restart_keys_names_what_only_a_restart_can_apply(tmp_path: Path) -> None:
    base = load_config(ROOT / "config.toml")
    same = load_config(ROOT / "config.toml")
    assert restart_keys(base, same) == []
    same.policies = same.policies[:1]
    same.dead_letter = "elsewhere/dl"
    same.consent.max_entries = 5
    same.log.level = "debug"
    same.ingest.gt06.allowed_imeis_file = str(tmp_path / "imeis.txt")
    same.reconnect.max_s = 5
    assert restart_keys(base, same) == []
    for key, change in [("local.url", lambda c: setattr(c.local, "url", "mqtt://127.0.0.1:1999")),
                        ("cloud.client_id", lambda c: setattr(c.cloud, "client_id", "other")),
                        ("spool.path", lambda c: setattr(c.spool, "path", "/elsewhere.db")),
                        ("group", lambda c: setattr(c, "group", "g2")),
                        ("ingest.gt06.listen", lambda c: setattr(c.ingest.gt06, "listen", "0.0.0.0:5023"))]:
        other = load_config(ROOT / "config.toml")
        change(other)
        assert restart_keys(base, other) == [key]


def test_sighup_rereads_config_toml(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    second = tmp_path / "second.toml"
    second.write_text(POLICY.read_text().replace('name = "service-test"', 'name = "second"')
                      .replace("site/{device}/telemetry", "site2/{device}/telemetry")
                      .replace("cloud/{device}/telemetry", "cloud2/{device}/telemetry")
                      .replace('topic = "site/dev-1/telemetry"', 'topic = "site2/dev-1/telemetry"')
                      .replace('expect_topic = "cloud/', 'expect_topic = "cloud2/'))
    issuer = tmp_path / "issuer.key"
    pub_key = subprocess.run([GATEWAY, "consent", "keygen", str(issuer)], capture_output=True, text=True,
                             check=True).stdout.strip()
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[POLICY, second],
                 extra='dead_letter = "gateway/dl1"')
    original = gw.config.read_text()
    sink, pub = Sink(cloud.url), Publisher(local.url)
    letters = Sink(local.url, topic="gateway/#", client_id="dl")

    def reload(text: str, success: int) -> None:
        before = gw.metric("gateway_policy_reloads_total")
        gw.config.write_text(text)
        gw.signal(signal.SIGHUP)
        wait_until(lambda: gw.metric("gateway_policy_reloads_total") > before, 20, "the reload")
        assert gw.metric("gateway_config_last_reload_success") == success

    def forwarded(topic: str) -> bool:
        """Whether a message on ``topic`` reaches the cloud: a marker on the first policy's topic is
        published after it; one worker forwards in order, so once the marker is there, so is it."""
        n = sink.count()
        pub.publish_all([(topic, msgspec.json.encode(MSG)), ("site/dev-1/telemetry", msgspec.json.encode(MSG))])
        wait_until(lambda: any(m.topic.startswith("cloud/") for m in sink.snapshot()[n:]), 20, "the marker")
        return any(m.topic.startswith("cloud2/") for m in sink.snapshot()[n:])

    try:
        signed = subprocess.run([GATEWAY, "consent", "grant", "--key", str(issuer), "dev-1", "precise_location"],
                                capture_output=True, check=True).stdout.strip()
        pub.client.publish("consent/dev-1/precise_location", signed, qos=1, retain=True).wait_for_publish(10)
        gw.start()
        started = gw.metric("gateway_config_last_reload_timestamp_seconds")
        assert gw.metric("gateway_config_last_reload_success") == 1 and started > 0
        wait_until(lambda: gw.metric("gateway_consent_updates_total", result="unauthenticated") == 1, 20, "no key yet")
        assert forwarded("site2/dev-1/telemetry")

        # restart-only keys are refused, with the key named, and nothing of that file applies
        other_port = original.replace(local.url, "mqtt://127.0.0.1:1")
        reload(other_port.replace(f', "{second}"', ""), 0)
        refusal = [json.loads(line) for line in gw.log_text().splitlines() if "config_reload_refused" in line]
        assert refusal and refusal[-1]["keys"] == ["local.url"] and "local.url" in refusal[-1]["error"]
        assert forwarded("site2/dev-1/telemetry")  # the second policy is still in force
        assert gw.metric("gateway_config_last_reload_timestamp_seconds") == started

        # live keys: a policy removed, the dead-letter prefix moved, the consent issuer's key added
        live = (original.replace(f', "{second}"', "").replace("gateway/dl1", "gateway/dl2")
                + f'[consent]\npublic_keys = ["{pub_key}"]\n')
        reload(live, 1)
        assert gw.metric("gateway_config_last_reload_timestamp_seconds") > started
        assert not forwarded("site2/dev-1/telemetry")
        wait_until(lambda: gw.metric("gateway_consent_updates_total", result="granted") == 1, 20,
                   "the retained record read again under the new key")
        n = sink.count()
        pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode(MSG))])
        assert round(json.loads(sink.wait_for(n + 1, 20)[n].payload)["lat"], 6) == 12.971598
        pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode({**MSG, "pin": "8642"}))])
        wait_until(lambda: any(m.topic.endswith("/credential") for m in letters.snapshot()), 20, "a dead letter")
        assert {m.topic for m in letters.snapshot() if m.topic.endswith("/credential")} == {"gateway/dl2/credential"}

        # the log level is live too: at warning, a good reload logs nothing
        lines = len(gw.log_text().splitlines())
        reload(live.replace('level = "info"', 'level = "warning"'), 1)
        reload(live.replace('level = "info"', 'level = "warning"').replace("shutdown_timeout_s = 5",
                                                                             "shutdown_timeout_s = 6"), 1)
        assert "policy_reloaded" not in "\n".join(gw.log_text().splitlines()[lines + 1:])

        # a dead-letter prefix the gateway subscribes to is refused on reload as at start
        reload(live.replace("gateway/dl2", "site/dl"), 0)
        assert gw.stop() == 0
    finally:
        for c in (letters, sink, pub):
            c.close()
        gw.close()


def test_sighup_applies_a_new_gt06_allow_list(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    import asyncio

    from devices.gt06 import simulator
    from gateway.mosquitto import free_port

    local, cloud = broker_pair
    port = free_port()
    first, second = simulator.imei_for(0, 3), simulator.imei_for(1, 3)
    allow = tmp_path / "trackers.txt"
    allow.write_text(f"{first}\n")
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[ROOT / "rules" / "jimi-tracksolid.toml"],
                 extra=f'[ingest.gt06]\nlisten = "127.0.0.1:{port}"\nallowed_imeis_file = "{allow}"')
    try:
        gw.start()
        stats = asyncio.run(simulator.run("127.0.0.1", port, devices=2, count=1, seed=3))
        assert stats.logged_in == 1 and gw.metric("gateway_gt06_events_total", event="rejected_imei") == 1
        allow.write_text(f"{first}\n{second}\n")
        before = gw.metric("gateway_policy_reloads_total", result="ok")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: gw.metric("gateway_policy_reloads_total", result="ok") > before, 20, "the reload")
        stats = asyncio.run(simulator.run("127.0.0.1", port, devices=2, count=1, seed=3))
        assert stats.logged_in == 2 and gw.metric("gateway_gt06_events_total", event="rejected_imei") == 1
        assert gw.stop() == 0
    finally:
        gw.close()
