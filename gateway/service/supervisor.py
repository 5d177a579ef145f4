"""``gateway run --workers N``: N worker processes consuming one shared subscription.

One process per core: the engine and paho are pure Python, so threads would
share one interpreter lock. The workers share nothing but the broker's shared
subscription (``$share/<group>/...``): pseudonyms are identical in every worker
because they depend only on the key. Each worker has its own client ids
(``<client_id>-<i>``), spool (``spool-<i>.db``) and metrics port (port + i).

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
from typing import Any

from gateway.service.config import Config
from gateway.service.preflight import EX_CONFIG
from gateway.telemetry import get_logger

__all__ = ["RESTARTS_ENV", "supervise"]

log = get_logger("gateway.supervisor")
POLL_S = 0.2
RESTARTS_ENV = "GATEWAY_WORKER_RESTARTS"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, so no orphan keeps a session or port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def _code(rc: int) -> int:
    """A Popen return code as a shell would show it (killed by signal N -> 128 + N)."""
    return 128 - rc if rc < 0 else rc


def supervise(cfg: Config, config: str, workers: int) -> int:
    policy = cfg.supervisor

    def spawn(i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", config, "--worker", str(i),
               "--workers", str(workers)]
        env = {**os.environ, RESTARTS_ENV: str(restarts[i])}
        started[i] = time.monotonic()
        return subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # the supervisor has no threads

    restarts = dict.fromkeys(range(workers), 0)
    failures = dict.fromkeys(range(workers), 0)  # quick failures in a row: the backoff exponent
    started: dict[int, float] = {}
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
                if i not in reported:
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
            log.info("supervisor_stopped", status=status)
            return status
        time.sleep(POLL_S)
