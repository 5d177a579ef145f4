"""A private Mosquitto on a free loopback port, for the live demo and the tests (never the service:
nothing ``gateway run`` imports reaches this module).

The gateway's delivery guarantees (manual acks, persistent sessions, restarts)
depend on what a real broker does, so tests run against Mosquitto itself rather
than a mock, and ``gateway demo`` starts a site broker and a "cloud" broker the
same way. Every broker listens on 127.0.0.1 only, on a free port, with its
config, persistence file and log in its own directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.ports import free_port

SETUP_HINT = "run `bash .ci/setup`, which installs it"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class MosquittoMissing(RuntimeError):
    """The mosquitto binary is not installed."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often off PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    raise MosquittoMissing(f"mosquitto is not installed: {SETUP_HINT}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One Mosquitto process on a free loopback port.

    Persistence is on, so `stop()` + `restart()` keeps sessions and queued QoS 1
    messages (Mosquitto saves its database on SIGTERM). `kill()` is a crash: state
    since the last save is lost, as it would be in production.
    """

    def __init__(self, workdir: Path | None = None, *, name: str = "broker", extra: str = "") -> None:
        self._binary = find_mosquitto()
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mosq-{name}-")) if workdir is None else workdir
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._extra = extra  # more mosquitto.conf lines, e.g. "max_inflight_messages 1000"
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        # Run as the current user: as root, Mosquitto 2 would otherwise drop to the
        # `mosquitto` user and be unable to write its persistence file here.
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "max_queued_messages 100000\n"
            "log_dest stderr\n"
            f"user {user}\n" + (self._extra.strip() + "\n" if self._extra.strip() else "")
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> Mosquitto:
        """Start the broker and return once its port accepts TCP connections."""
        if self.running:
            return self
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n{self.log_tail()}"
                )
            if _accepts(self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"mosquitto did not listen on port {self.port} within {_START_TIMEOUT}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves sessions and queues to disk."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)
        self._proc = None

    def kill(self) -> None:
        """Crash (SIGKILL): nothing is saved."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)
        self._proc = None

    def restart(self) -> Mosquitto:
        """Stop gracefully (if running) and start again on the same port and data dir."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the working directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mosquitto(url={self.url!r}, running={self.running})"
