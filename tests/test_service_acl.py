"""The local broker's ACL (deploy/mosquitto/site.acl, docs/operations.md) with the gateway
behind it: a device can neither forge consent nor read or forge dead letters; the consent
service and the dead-letter reader can do their part. Real Mosquitto with password_file and
acl_file, the real console script."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from service_harness import GATEWAY, ROOT, Gateway, Sink, wait_until

from gateway.mosquitto import find_mosquitto, free_port

DEPLOY = ROOT / "deploy" / "mosquitto"
IMEI = "358756091234567"
USERS = {"gateway": "gw-pw", "consent": "consent-pw", "dead-letter-reader": "dl-pw", IMEI: "dev-pw"}


@pytest.fixture
def site_broker(tmp_path: Path):
    """deploy/mosquitto/site.conf and site.acl as shipped; only ports and paths moved here."""
    devices, services = free_port(), free_port()
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True, timeout=30)
    shutil.copy(DEPLOY / "site.acl", tmp_path / "site.acl")
    (tmp_path / "data").mkdir()
    conf = ((DEPLOY / "site.conf").read_text()
            .replace("listener 1883", f"listener {devices} 127.0.0.1")
            .replace("listener 1884", f"listener {services} 127.0.0.1")
            .replace("/var/lib/mosquitto/", f"{tmp_path}/data/")
            .replace("/etc/mosquitto/passwd", str(passwd))
            .replace("/etc/mosquitto/site.acl", str(tmp_path / "site.acl")))
    conf += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
    (tmp_path / "site.conf").write_text(conf)
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "site.conf")], stdout=subprocess.DEVNULL,
                            stderr=log)

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", services), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_until(up, 20, "mosquitto with site.conf")
        yield devices, services
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


class User:
    """A paho MQTT 5 client logged in as one of USERS; records messages and SUBACK/PUBACK codes."""

    def __init__(self, port: int, user: str) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.suback: list = []
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{user}", protocol=paho.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_message = lambda _c, _u, m: self._got(m)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.extend(codes)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_until(self.client.is_connected, 20, f"{user} connected")

    def _got(self, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(m)

    def subscribe(self, topic: str) -> object:
        n = len(self.suback)
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: len(self.suback) > n, 20, "SUBACK")
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_site_acl_keeps_consent_and_dead_letters_to_their_owners(tmp_path: Path, site_broker, broker) -> None:
    devices, services = site_broker
    issuer = tmp_path / "issuer.key"
    pub_key = subprocess.run([GATEWAY, "consent", "keygen", str(issuer)], capture_output=True, text=True,
                             check=True).stdout.strip()
    (tmp_path / "local-pw").write_text(USERS["gateway"] + "\n")
    gw = Gateway(tmp_path / "gw", f"mqtt://127.0.0.1:{services}", broker.url,
                 policies=[ROOT / "rules" / "jimi-tracksolid.toml"],
                 extra=f'dead_letter = "gateway/dead-letter"\n[consent]\npublic_keys = ["{pub_key}"]')
    login = f'username = "gateway"\npassword_file = "{tmp_path}/local-pw"\n'
    gw.config.write_text(gw.config.read_text().replace('client_id = "gw-local"\n', 'client_id = "gw-local"\n' + login))
    fleet = Sink(broker.url, topic="fleet/#", client_id="fleet")
    device = User(devices, IMEI)
    consent = User(services, "consent")
    reader = User(services, "dead-letter-reader")
    grant = subprocess.run([GATEWAY, "consent", "grant", "--key", str(issuer), IMEI, "precise_location"],
                           capture_output=True, check=True).stdout.strip()
    location = json.dumps({"imei": IMEI, "latitude": 12.971598, "longitude": 77.594562}).encode()
    try:
        gw.start()
        # a device cannot read dead letters (Mosquitto grants the subscription but delivers nothing)
        device.subscribe("gateway/dead-letter/#")
        assert not reader.subscribe("gateway/dead-letter/#").is_failure
        # a device cannot write consent, even a validly signed record it captured
        device.publish(f"consent/{IMEI}/precise_location", grant, retain=True)
        device.publish(f"tracksolid/{IMEI}/location", location)
        (first,) = fleet.wait_for(1, 20)
        assert gw.metric("gateway_consent_updates_total") == 0
        assert round(json.loads(first.payload)["latitude"], 6) != 12.971598
        # the consent service can
        consent.publish(f"consent/{IMEI}/precise_location", grant, retain=True)
        wait_until(lambda: gw.metric("gateway_consent_updates_total", result="granted") == 1, 20, "the grant")
        device.publish(f"tracksolid/{IMEI}/location", location)
        second = fleet.wait_for(2, 20)[1]
        assert round(json.loads(second.payload)["latitude"], 6) == 12.971598
        # a device cannot forge a dead letter; the gateway's reach only the reader, sealed
        device.publish("gateway/dead-letter/credential", b"forged")
        device.publish(f"tracksolid/{IMEI}/location", b"not json " + IMEI.encode())
        wait_until(lambda: len(reader.messages) >= 1, 20, "the dead letter")
        wait_until(lambda: gw.metric("gateway_dead_lettered_total") == 1, 20, "counted")
        assert [m.payload for m in reader.messages if m.payload == b"forged"] == []
        assert IMEI.encode() not in reader.messages[0].payload and device.messages == []
        opened = subprocess.run([GATEWAY, "deadletter", "open", "--keys", str(gw.keys)], capture_output=True,
                                input=reader.messages[0].payload + b"\n", check=True).stdout
        assert json.loads(opened)["topic"] == f"tracksolid/{IMEI}/location"
        assert gw.stop() == 0
    finally:
        for c in (device, consent, reader):
            c.close()
        fleet.close()
        gw.close()
