"""Run ``gateway run`` as a real process against real brokers (helpers, not a test module).

The service's guarantees are about processes and sockets (SIGKILL, broker
restarts, shared subscriptions), so the tests drive the installed console script
and observe only what a user could: what the cloud broker delivers, the spool
file, the log output and the /metrics page. Publishers and sinks are plain paho
clients on their own threads; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mosquitto import free_port  # noqa: F401 - the tests take it from here

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = str(Path(sys.executable).with_name("gateway"))
POLICY = ROOT / "tests" / "policies" / "service.toml"




def metrics_ports(n: int) -> int:
    """A first port such that ``n`` ports from it are free, below the kernel's ephemeral range
    (32768-60999): there an outgoing connection's source port could take worker i's port + i."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free block of metrics ports")


def assert_json_lines(text: str, what: str = "log") -> list[dict]:
    """Every line is one JSON object carrying ``worker`` and ``pid`` (docs/operations.md, Logs); returns them."""
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"{what} line {n} is not JSON: {line[:300]!r}") from None
        assert isinstance(event, dict), f"{what} line {n} is not a JSON object: {line[:300]!r}"
        assert "worker" in event and isinstance(event.get("pid"), int), \
            f"{what} line {n} lacks worker/pid: {line[:300]}"
        events.append(event)
    return events


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Gateway:
    """One ``gateway run`` process with its own config, keys, spool and log file."""

    def __init__(
        self,
        workdir: Path,
        local_url: str,
        cloud_url: str,
        *,
        policies: Iterable[Path] = (POLICY,),
        workers: int = 1,
        extra: str = "",
        spool_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.keys = workdir / "keys.json"
        if not self.keys.exists():
            subprocess.run([GATEWAY, "keygen", str(self.keys)], check=True, capture_output=True)
        self.port = metrics_ports(workers)
        self.workers = workers
        self.log_path = workdir / "gateway.log"
        self.spool_path = workdir / "spool.db"
        self.config = workdir / "config.toml"
        plist = ", ".join(f'"{p}"' for p in policies)
        group = 'group = "gw"\n' if workers > 1 else ""
        self.config.write_text(
            f"policies = [{plist}]\nkeys_file = \"{self.keys}\"\n{group}shutdown_timeout_s = 5\n{extra}\n"
            f"[local]\nurl = \"{local_url}\"\nclient_id = \"gw-local\"\nkeepalive_s = 5\n"
            f"[cloud]\nurl = \"{cloud_url}\"\nclient_id = \"gw-cloud\"\nkeepalive_s = 5\n"
            f"[spool]\npath = \"{self.spool_path}\"\nmax_bytes = {spool_max_bytes}\n"
            f"[metrics]\nlisten = \"127.0.0.1:{self.port}\"\n"
            "[log]\nformat = \"json\"\nlevel = \"info\"\n"
            "[reconnect]\nmin_s = 0.1\nmax_s = 1.0\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Gateway:
        cmd = [GATEWAY, "run", "--config", str(self.config)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_ready:  # with --workers N the supervisor's /readyz is ready once every worker is
            wait_until(self.ready, 20, f"gateway /readyz\n{self.log_tail()}", 0.05)
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self.http("/readyz")[0] == 200

    def metrics(self) -> str:
        """The one /metrics page (with --workers N, the supervisor's merge: samples carry ``worker``)."""
        return self.http("/metrics")[1]

    def metric(self, name: str, worker: int | None = None, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (and ``worker``, if given)."""
        if worker is not None:
            labels["worker"] = str(worker)
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            head = series.split("{", 1)[0]
            if head != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        if self.workers > 1:  # the supervisor and its workers
            for child in _children(self.proc.pid):
                os.kill(child, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(timeout=10)

    def events(self) -> list[dict]:
        """The log as JSON events, asserting that every line is one (with ``worker`` and ``pid``)."""
        return assert_json_lines(self.log_text(), str(self.log_path))

    def close(self, check_log: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        if check_log:
            self.events()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _persistent_client(url: str, client_id: str, setup: Callable[[paho.Client], None] = lambda c: None) -> paho.Client:
    """A paho MQTT 5 client with a persistent session on its own network thread, connected to ``url``."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.reconnect_delay_set(0.05, 0.5)
    setup(client)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    host, port = _host_port(url)
    client.connect(host, port, keepalive=5, clean_start=False, properties=props)
    client.loop_start()
    return client


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    return host, int(port)


class Sink:
    """A cloud-side subscriber (persistent session) recording everything it receives."""

    def __init__(self, url: str, topic: str = "#", client_id: str = "test-sink") -> None:
        self.messages: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.topic = topic
        self.subscribed = threading.Event()

        def setup(client: paho.Client) -> None:
            client.on_message = self._on_message
            client.on_connect = self._on_connect
            client.on_subscribe = lambda *a: self.subscribed.set()

        self.client = _persistent_client(url, client_id, setup)
        if not self.subscribed.wait(10):
            raise AssertionError("sink did not subscribe")

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: object, _p: object = None) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def snapshot(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, n: int, timeout: float) -> list[paho.MQTTMessage]:
        wait_until(lambda: self.count() >= n, timeout, f"{n} messages at the sink (have {self.count()})", 0.05)
        return self.snapshot()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A device-side publisher; ``publish_all`` waits for every PUBACK (retrying across broker restarts)."""

    def __init__(self, url: str, client_id: str = "test-devices") -> None:
        self.client = _persistent_client(url, client_id, lambda c: c.max_inflight_messages_set(200))

    def publish_all(
        self, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout: float = 60
    ) -> int:
        wait_until(self.client.is_connected, 30, "the publisher (re)connected")  # e.g. after a broker restart
        infos = []
        for topic, payload in messages:
            infos.append(self.client.publish(topic, payload, qos=qos))
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError("publisher: a message was not acknowledged in time")
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
