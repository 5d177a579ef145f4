"""``gateway run --workers N``: N worker processes consuming one shared subscription.

One process per core: the engine and paho are pure Python, so threads would
share one interpreter lock. The workers share nothing but the broker's shared
subscription (``$share/<group>/...``): pseudonyms are identical in every worker
because they depend only on the key. Each worker has its own client ids
(``<client_id>-<i>``) and spool (``spool-<i>.db``).

One scrape target: the supervisor serves ``metrics.listen`` itself. Each worker
serves its page on a free loopback port the supervisor picked, and the
supervisor's /metrics fetches and merges them at scrape time, adding a
``worker`` label (see ``telemetry.merge_pages``); its /readyz is ready when every
worker is. No shared files, no multiprocess mode: a worker's page is exactly
what it would serve alone.

The supervisor forwards SIGTERM/SIGINT/SIGHUP to the workers and restarts a
worker that dies, after ``[supervisor] restart_min_s`` doubling to
``restart_max_s``; the delay starts over once a worker ran ``healthy_after_s``
before it died. A worker exiting 78 (EX_CONFIG: a policy, key, secret or TLS file
that cannot be used) would fail again on every restart, so the supervisor stops
all workers and exits 78. Each worker exports its restart count (passed in
``GATEWAY_WORKER_RESTARTS``) as ``gateway_worker_restarts_total``. The workers
write their log lines to the supervisor's stderr directly, each line one atomic
write (see telemetry.py), so lines never interleave.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from gateway.ports import free_port
from gateway.service.config import Config
from gateway.service.preflight import EX_CONFIG
from gateway.telemetry import get_logger, merge_pages, serve

__all__ = ["PARENT_ENV", "RESTARTS_ENV", "die_with_parent", "supervise"]

log = get_logger("gateway.supervisor")
POLL_S = 0.2
RESTARTS_ENV = "GATEWAY_WORKER_RESTARTS"
PARENT_ENV = "GATEWAY_SUPERVISOR_PID"


SCRAPE_TIMEOUT_S = 3.0
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def die_with_parent(parent: int) -> None:
    """In a supervised worker: SIGTERM when the supervisor dies, so no orphan keeps a session or port.

    Set in the worker itself (not in a ``preexec_fn``: the supervisor has threads), then
    checked once, in case the supervisor died before the worker got this far.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _code(rc: int) -> int:
    """A Popen return code as a shell would show it (killed by signal N -> 128 + N)."""
    return 128 - rc if rc < 0 else rc


class WorkerPages:
    """The supervisor's /metrics: the workers' pages, fetched in parallel and merged at scrape time."""

    def __init__(self, ports: dict[int, int]) -> None:
        self.ports = ports
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(ports)), thread_name_prefix="scrape")
        self.registry = CollectorRegistry(auto_describe=True)  # the supervisor's own metrics
        self.up = Gauge("gateway_worker_up", "1 if the worker answered the supervisor's last scrape", ["worker"],
                        registry=self.registry)

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with _LOOPBACK.open(f"http://127.0.0.1:{port}{path}", timeout=SCRAPE_TIMEOUT_S) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read().decode()  # /readyz's 503 says why
            except OSError:
                body = ""
            return exc.code, body
        except OSError:
            return 0, ""  # restarting, or not listening yet

    def render(self) -> bytes:
        results = self._pool.map(lambda i: (i, self._get(self.ports[i], "/metrics")), list(self.ports))
        pages = {str(i): text for i, (status, text) in results if status == 200}
        for i in self.ports:
            self.up.labels(str(i)).set(str(i) in pages)
        return merge_pages(pages, self.registry)

    def ready(self) -> bool:
        results = list(self._pool.map(lambda i: (i, self._get(self.ports[i], "/readyz")), list(self.ports)))
        # The workers' detail lines (a spool that cannot write, a quarantine), for ``detail``.
        self._details = "".join(f"worker {i}: {line}\n" for i, (_, body) in results for line in body.splitlines()[1:])
        return all(status == 200 for _, (status, _) in results)

    def detail(self) -> str:
        """The detail lines of the last ``ready()`` (the HTTP handler calls the two in turn)."""
        return getattr(self, "_details", "")


def supervise(cfg: Config, config: str, workers: int) -> int:
    """Run and watch ``workers`` worker processes; the exit code is theirs (0, or 78 on a config exit).

    Raises ``telemetry.ListenError`` when ``[metrics] listen`` cannot be bound.
    """
    policy = cfg.supervisor
    metrics_listen = cfg.metrics.listen
    host, _, port = metrics_listen.rpartition(":")
    ports = {i: free_port() for i in range(workers)} if metrics_listen else {}

    def spawn(i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", config, "--worker", str(i),
               "--workers", str(workers)]
        if ports:
            if i in started:  # a restart: a fresh port, in case an outgoing connection took the old one
                ports[i] = free_port()
            cmd += ["--metrics-listen", f"127.0.0.1:{ports[i]}"]
        env = {**os.environ, RESTARTS_ENV: str(restarts[i]), PARENT_ENV: str(os.getpid())}
        started[i] = time.monotonic()
        return subprocess.Popen(cmd, env=env)

    restarts = dict.fromkeys(range(workers), 0)
    failures = dict.fromkeys(range(workers), 0)  # quick failures in a row: the backoff exponent
    started: dict[int, float] = {}
    http = None
    if ports:
        pages = WorkerPages(ports)
        http = serve(pages, host.strip("[]") or "127.0.0.1", int(port), ready=pages.ready,  # type: ignore[arg-type]
                     detail=pages.detail)
    procs = {i: spawn(i) for i in range(workers)}
    due: dict[int, float] = {}
    stopping = False
    status = 0

    def stop_all(sig: int = signal.SIGTERM) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(sig)

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        stop_all(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("supervisor_started", workers=workers, worker_pids=[p.pid for p in procs.values()])
    reported: set[int] = set()
    while True:
        alive = 0
        now = time.monotonic()
        for i, p in list(procs.items()):
            rc = p.poll()
            if rc is None:
                alive += 1
                continue
            if stopping:
                if i not in reported and i not in due:  # one waiting for its restart was logged already
                    reported.add(i)
                    status = status or _code(rc)
                continue
            if i in due:
                if now >= due[i]:
                    del due[i]
                    restarts[i] += 1
                    procs[i] = spawn(i)
                    alive += 1
                    log.info("worker_restarted", worker=i, worker_pid=procs[i].pid, restarts=restarts[i])
                continue
            ran = now - started[i]
            if rc == EX_CONFIG:
                log.error("worker_config_error", worker=i, code=rc, ran_s=round(ran, 1),
                          action="stopping all workers: a restart would fail the same way")
                stopping = True
                status = EX_CONFIG
                reported.add(i)
                stop_all()
                continue
            if ran >= policy.healthy_after_s:
                failures[i] = 0  # it ran healthily: this is a new incident, not the same one again
            failures[i] += 1
            delay = min(policy.restart_max_s, policy.restart_min_s * 2 ** min(failures[i] - 1, 30))
            due[i] = now + delay
            log.error("worker_exited", worker=i, code=_code(rc), ran_s=round(ran, 1), restart_in_s=round(delay, 2),
                      failures_in_a_row=failures[i])
        if stopping and alive == 0:
            if http is not None:
                http.shutdown()
            log.info("supervisor_stopped", status=status)
            return status
        time.sleep(POLL_S)
