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

The supervisor forwards SIGTERM/SIGINT/SIGHUP to the workers, restarts a worker
that dies (with backoff), and exits 0 once all workers stopped after a SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Gauge

from gateway.mosquitto import free_port
from gateway.telemetry import get_logger, merge_pages, serve

__all__ = ["supervise"]

log = get_logger("gateway.supervisor")
POLL_S = 0.2


SCRAPE_TIMEOUT_S = 3.0
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


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
            return exc.code, ""
        except OSError:
            return 0, ""  # restarting, or not listening yet

    def render(self) -> bytes:
        results = self._pool.map(lambda i: (i, self._get(self.ports[i], "/metrics")), list(self.ports))
        pages = {str(i): text for i, (status, text) in results if status == 200}
        for i in self.ports:
            self.up.labels(str(i)).set(str(i) in pages)
        return merge_pages(pages, self.registry)

    def ready(self) -> bool:
        results = self._pool.map(lambda p: self._get(p, "/readyz")[0], list(self.ports.values()))
        return all(status == 200 for status in results)


def supervise(config: str, workers: int, extra: list[str] | None = None, metrics_listen: str = "") -> int:
    host, _, port = metrics_listen.rpartition(":")
    ports = {i: free_port() for i in range(workers)} if metrics_listen else {}

    def spawn(i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", config,
               "--worker", str(i), "--workers", str(workers)]
        if ports:
            cmd += ["--metrics-listen", f"127.0.0.1:{ports[i]}"]
        return subprocess.Popen(cmd + (extra or []))

    http = None
    if ports:
        pages = WorkerPages(ports)
        http = serve(pages, host.strip("[]") or "127.0.0.1", int(port), ready=pages.ready)  # type: ignore[arg-type]
    procs = {i: spawn(i) for i in range(workers)}
    restarts = {i: 0 for i in range(workers)}
    due: dict[int, float] = {}
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("supervisor_started", workers=workers)
    status = 0
    while True:
        alive = 0
        for i, p in list(procs.items()):
            rc = p.poll()
            if rc is None:
                alive += 1
                continue
            if stopping:
                status = status or rc
                continue
            if i not in due:
                restarts[i] += 1
                delay = min(30.0, 0.5 * 2 ** min(restarts[i], 6))
                due[i] = time.monotonic() + delay
                log.error("worker_exited", worker=i, code=rc, restart_in_s=round(delay, 1))
            elif time.monotonic() >= due[i]:
                del due[i]
                procs[i] = spawn(i)
                alive += 1
        if stopping and alive == 0:
            if http is not None:
                http.shutdown()
            log.info("supervisor_stopped", status=status)
            return status
        time.sleep(POLL_S)
