"""``gateway run --workers N``: N worker processes consuming one shared subscription.

One process per core: the engine and paho are pure Python, so threads would
share one interpreter lock. The workers share nothing but the broker's shared
subscription (``$share/<group>/...``): pseudonyms are identical in every worker
because they depend only on the key. Each worker has its own client ids
(``<client_id>-<i>``), spool (``spool-<i>.db``) and metrics port (port + i).

The supervisor forwards SIGTERM/SIGINT/SIGHUP to the workers, restarts a worker
that dies (with backoff), and exits 0 once all workers stopped after a SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from gateway.telemetry import get_logger

__all__ = ["supervise"]

log = get_logger("gateway.supervisor")
POLL_S = 0.2


def supervise(config: str, workers: int, extra: list[str] | None = None) -> int:
    def spawn(i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", config, "--worker", str(i), "--workers", str(workers)]
        return subprocess.Popen(cmd + (extra or []))

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
            log.info("supervisor_stopped", status=status)
            return status
        time.sleep(POLL_S)
