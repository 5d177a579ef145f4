"""Logs, metrics and the health endpoints, kept apart from the pure engine.

Everything an operator can see comes from the policy or the engine (policy name,
reason code, rule label, detector name, operation name): never a payload value,
a topic level or a device id. A metrics or log pipeline is usually far less
protected than the data path, so it must not become the leak the gateway exists
to prevent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import platform
import re
import select
import socket
import sys
import threading
import time
import traceback
import warnings
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any, TextIO

import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.compile import Plan

__all__ = [
    "REDACTED_KEYS", "ListenError", "Metrics", "configure_logging", "exception_fields", "get_logger",
    "loop_exception_handler", "merge_pages", "redact_payloads", "route_process_output", "serve",
]

# -- logging -------------------------------------------------------------------------------

REDACTED_KEYS = frozenset({"payload", "message", "value", "raw", "input"})
MAX_LINE = select.PIPE_BUF  # a pipe write up to this size is atomic: lines of N workers never splice
_CORE_KEYS = ("timestamp", "level", "event", "logger", "worker", "pid", "error", "location")


def redact_payloads(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop event keys that would carry message content (payload, message, value, raw, input).

    Defence in depth: the code never logs payload values, but one careless
    ``log.info("x", payload=...)`` would ship personal data to wherever logs go.
    This processor runs before every renderer, so such a slip cannot reach output.
    """
    for key in [k for k in event_dict if k.lower() in REDACTED_KEYS]:
        del event_dict[key]
    return event_dict


class _LineWriter:
    """Writes each line with one ``os.write`` of at most PIPE_BUF bytes.

    Workers share the supervisor's stderr; a write of up to PIPE_BUF bytes to a pipe
    (or an O_APPEND file) is never split, so their lines cannot interleave. A stream
    without a file descriptor (tests) gets a plain write under a lock.
    """

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self._lock = threading.Lock()
        try:
            self._fd: int | None = file.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, line: str) -> None:
        with self._lock:
            try:
                if self._fd is None:
                    self.file.write(line + "\n")
                    self.file.flush()
                    return
                data = (line + "\n").encode("utf-8", "replace")
                while data:
                    data = data[os.write(self._fd, data):]
            except (OSError, ValueError):
                pass  # stderr is gone: nowhere left to say so


class _LineLogger:
    """structlog's output end: one rendered event -> one line (``name`` feeds the ``logger`` key)."""

    def __init__(self, writer: _LineWriter, name: str) -> None:
        self._writer = writer
        self.name = name

    def msg(self, message: str) -> None:
        self._writer.write(message)

    log = debug = info = warn = warning = error = err = fatal = exception = critical = failure = msg


def _add_logger_name(logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("logger", getattr(logger, "name", "") or "gateway")
    return event_dict


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # gateway/ lives here


def _short_path(filename: str) -> str:
    """``/srv/venv/lib/.../gateway/service/uplink.py`` -> ``gateway/service/uplink.py`` (no host paths)."""
    best = ""
    for entry in (*sys.path, _PACKAGE_PARENT):
        if entry and filename.startswith(entry.rstrip(os.sep) + os.sep) and len(entry) > len(best):
            best = entry.rstrip(os.sep) + os.sep
    return filename[len(best):] if best else os.path.basename(filename)


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """What a log line may say about an exception: its type and where it was raised.

    Never its text: an exception's message can quote a payload, a topic or a peer
    address. ``location`` is file:line of the innermost frame; ``frames`` the last
    few frames (file:line function) outward from there.
    """
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    out: dict[str, Any] = {"error": type(exc).__qualname__}
    if frames:
        out["location"] = f"{_short_path(frames[-1].filename)}:{frames[-1].lineno}"
        out["frames"] = [f"{_short_path(f.filename)}:{f.lineno} {f.name}" for f in frames[-8:]][::-1]
    return out


def _summarise_exception(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` by :func:`exception_fields` (JSON output: no traceback text)."""
    info = event_dict.pop("exc_info", None)
    event_dict.pop("stack", None)
    if info is True:
        info = sys.exc_info()
    if isinstance(info, tuple):
        info = info[1]
    if isinstance(info, BaseException):
        fields = exception_fields(info)
        if "error" in event_dict:  # keep the caller's own error text; add the type as exc_type
            fields["exc_type"] = fields.pop("error")
        event_dict.update(fields)
    return event_dict


def _render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """One JSON object, short enough for one atomic write (long strings and lists are cut)."""
    line = json.dumps(event_dict, default=repr)
    if len(line) < MAX_LINE:
        return line
    short: dict[str, Any] = {}
    for key, val in event_dict.items():
        if isinstance(val, str) and len(val) > 200:
            val = val[:200] + "..."
        elif isinstance(val, (list, tuple)) and len(val) > 8:
            val = [*list(val)[:8], f"... {len(val) - 8} more"]
        short[key] = val
    short["truncated"] = True
    line = json.dumps(short, default=repr)
    if len(line) < MAX_LINE:
        return line
    core = {k: short[k] for k in _CORE_KEYS if k in short}
    return json.dumps({**core, "truncated": True}, default=repr)  # core strings are already cut to 200


def _safe_text(text: str) -> str:
    """The fixed part of a library's message: cut before anything that could be data."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return re.split(r"[(<\[{:'\"=]", first, maxsplit=1)[0].strip()[:120] or "log"


class _StdlibBridge(logging.Handler):
    """Routes the stdlib ``logging`` tree (asyncio, paho via aiomqtt, ...) into structlog.

    Only the fixed part of a record's message is kept: its format string, cut before
    any bracket or quote; never the interpolated arguments, which can be a topic or
    an exception's text.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
            fields: dict[str, Any] = {"source": "logging"}
            if record.exc_info and record.exc_info[1] is not None:
                fields["exc_info"] = record.exc_info[1]
            method = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}.get(
                record.levelno, "error" if record.levelno < logging.CRITICAL else "critical")
            getattr(structlog.get_logger(record.name), method)(_safe_text(template), **fields)
        except Exception:  # a logging handler must never raise
            pass


_context: dict[str, Any] = {}


def _add_process(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("worker", _context.get("worker", 0))
    event_dict["pid"] = os.getpid()
    return event_dict


def configure_logging(
    json: bool | None = None, level: str = "info", file: TextIO | None = None, worker: int | str | None = None
) -> None:
    """Configure structlog, and route the stdlib ``logging`` tree through it, in one place.

    ``json=None`` picks: a readable console renderer when stderr is a TTY (a
    person is watching), JSON lines otherwise (a collector is parsing).
    ``file`` defaults to stderr, so stdout stays free for command output. Every
    event carries ``worker`` (the worker index, or ``"supervisor"``; ``None`` keeps
    the one set before, so a reload need not know it) and ``pid``.
    """
    out = file if file is not None else sys.stderr
    if isinstance(out, _StrayOutput):  # reconfigured after route_process_output(): the real stderr
        out = sys.__stderr__ or out
    if json is None:
        json = not out.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if worker is not None:
        _context["worker"] = worker
    _context["json"] = json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        _add_process,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_payloads,
    ]
    if json:
        processors += [_summarise_exception, _render_json]
    else:
        processors += [structlog.processors.StackInfoRenderer(), structlog.dev.ConsoleRenderer()]
    writer = _LineWriter(out)  # type: ignore[arg-type]  # _StrayOutput only until the line above replaced it
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *args: _LineLogger(writer, str(args[0]) if args else ""),
        cache_logger_on_first_use=False,  # reconfiguration (tests, reload) must take effect
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(numeric)


def get_logger(name: str) -> Any:
    """A lazy logger whose lines carry ``logger=<name>``; safe to create at import time."""
    return structlog.get_logger(name)


class _StrayOutput(io.TextIOBase):
    """``sys.stderr`` of a JSON-logging process: stray text becomes a counted event, not a raw line.

    Whatever still writes to ``sys.stderr`` directly (a library's ``traceback.print_exc()``)
    could print a payload or a peer address, so only its size is logged.
    """

    def __init__(self) -> None:
        self._log = get_logger("gateway.stderr")
        self._pending = 0
        self._busy = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += len(text)
        if "\n" in text and not self._busy:
            self._busy = True  # the logger itself must never land here again
            try:
                self._log.warning("stray_output", chars=self._pending,
                                  note="text written to stderr outside the logger")
            finally:
                self._busy = False
            self._pending = 0
        return len(text)


def route_process_output() -> None:
    """Make every error path of this process end as one JSON event (call after configure_logging).

    Uncaught exceptions (main thread, other threads, "exception ignored" cases),
    warnings, and (with JSON output) stray writes to ``sys.stderr`` all become
    events with the exception type and location (see :func:`exception_fields`).
    """
    log = get_logger("gateway.process")

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        log.critical("uncaught_exception", exc_info=exc, thread="main")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            log.error("uncaught_exception", exc_info=args.exc_value, thread=args.thread.name if args.thread else "")

    def unraisable(args: Any) -> None:
        log.warning("unraisable_exception", exc_info=args.exc_value, what=_safe_text(str(args.err_msg or "")))

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        log.warning("python_warning", category=category.__name__, location=f"{_short_path(filename)}:{lineno}")

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable
    warnings.showwarning = showwarning
    if _context.get("json") and not isinstance(sys.stderr, _StrayOutput):
        sys.stderr = _StrayOutput()  # a person at a console may see raw text; a collector may not


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler: an exception in a callback or task becomes one JSON event.

    asyncio's default handler prints the callback with its arguments and a traceback;
    here only the callback's or task's name, the exception type and location are kept.
    """
    fields: dict[str, Any] = {"what": _safe_text(str(context.get("message", "")))}
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    if callback is not None:
        fields["callback"] = getattr(callback, "__qualname__", type(callback).__name__)
    task = context.get("task") or context.get("future")
    if isinstance(task, asyncio.Task):
        fields["task"] = task.get_name()
    exc = context.get("exception")
    get_logger("gateway.loop").error("loop_exception", exc_info=exc if isinstance(exc, BaseException) else None,
                                     **fields)


# -- metrics -------------------------------------------------------------------------------

# No `*_created` series: they double the series count and no dashboard or alert reads them.
disable_created_metrics()

# Engine time per message: the hot path is microseconds; tens of ms means trouble.
BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2)
# Receipt at the site to safe (cloud PUBACK or spool commit): milliseconds when healthy,
# seconds under load or while the spool takes over, never more than a minute or two.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
NO_POLICY = "none"  # policy label of a message no policy routes


def _package_version() -> str:
    try:
        return metadata.version("telemetry-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"



class _Series:
    """One labelled series of a loop metric: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class LoopCounter(Collector):
    """A counter (or gauge) on the per-message path: plain numbers the event loop's thread adds
    to, exported at scrape time.

    prometheus_client takes a lock and builds its objects on every ``inc``; a gateway counts
    several series per message. Here an ``inc`` is one addition. Writers are the worker's event
    loop thread only (every message path runs there); scrapes read from any thread."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 registry: CollectorRegistry, kind: str = "counter") -> None:
        self._family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._series: dict[tuple[str, ...], _Series] = {}
        if not self._labelnames:
            self._series[()] = _Series()
        registry.register(self)

    def labels(self, *values: Any) -> _Series:
        """The series for ``values`` (created at 0, so it is exported before its first event)."""
        key = tuple(map(str, values))
        series = self._series.get(key)
        if series is None:
            if len(key) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {len(key)} values")
            series = self._series.setdefault(key, _Series())
        return series

    def inc(self, amount: float = 1) -> None:
        self._series[()].value += amount

    def set(self, value: float) -> None:
        self._series[()].value = value

    def describe(self) -> Iterator[Metric]:
        yield self._family(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family(self._name, self._doc, labels=self._labelnames)
        for key, series in self._series.copy().items():  # dict.copy: one step under the GIL
            family.add_metric(list(key), series.value)
        yield family


class _Buckets:
    """One labelled series of a loop histogram: a count per bucket and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= le
        self.sum += amount


class LoopHistogram(Collector):
    """A histogram on the per-message path, on the terms of LoopCounter: ``observe`` is a
    bisect and two additions, the cumulative buckets are built at scrape time."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._bounds = sorted(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self._bounds]
        self._series: dict[tuple[str, ...], _Buckets] = {}
        if not self._labelnames:
            self._series[()] = _Buckets(self._bounds)
        registry.register(self)

    def labels(self, *values: Any) -> _Buckets:
        key = tuple(map(str, values))
        series = self._series.get(key)
        if series is None:
            if len(key) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {len(key)} values")
            series = self._series.setdefault(key, _Buckets(self._bounds))
        return series

    def observe(self, amount: float) -> None:
        self._series[()].observe(amount)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for key, series in self._series.copy().items():
            counts, total, running, buckets = list(series.counts), series.sum, 0, []
            for le, n in zip([*self._le, "+Inf"], counts, strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric(list(key), buckets, total)
        yield family


class _EngineCollector(Collector):
    """Per-plan engine counters, read lazily at scrape time (nothing added to the hot path)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: its label values change with the policies

    def collect(self) -> Iterator[Metric]:
        actions = CounterMetricFamily("gateway_field_actions", "Field operations applied", labels=["policy", "op"])
        unknown = CounterMetricFamily(
            "gateway_unknown_fields_sampled", "Undeclared fields removed, in sampled messages", labels=["policy"]
        )
        sampled = CounterMetricFamily(
            "gateway_unknown_field_sampled_messages", "Messages sampled for undeclared fields", labels=["policy"]
        )
        events = CounterMetricFamily(
            "gateway_field_events",
            "Field-level events (invalid values, privacy zones)",
            labels=["policy", "rule", "event"],
        )
        engine = self.engine
        for plan in engine.plans if engine is not None else ():
            snap = plan.stats.snapshot()  # message-level events are Metrics.observe's, not in it
            for op, n in sorted(snap.actions.items()):
                actions.add_metric([plan.name, op], n)
            unknown.add_metric([plan.name], snap.unknown_fields)
            sampled.add_metric([plan.name], snap.sampled_messages)
            for rule, event, n in snap.field_events:
                events.add_metric([plan.name, rule, event], n)
        yield from (actions, unknown, sampled, events)


class Metrics:
    """All gateway metrics, in a private registry (tests and workers never collide)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # Counted per message: LoopCounter / LoopHistogram (plain numbers, exported at scrape time).
        self.messages_in = LoopCounter("gateway_messages_in", "Messages received", ["policy"], registry=r)
        self.messages_out = LoopCounter("gateway_messages_out", "Messages forwarded", ["policy"], registry=r)
        self.dropped = LoopCounter(
            "gateway_messages_dropped", "Messages not forwarded", ["policy", "reason"], registry=r
        )
        self.leaks = LoopCounter(
            "gateway_leaks_blocked",
            "Messages stopped by the leak guard",
            ["policy", "rule", "detector"],
            registry=r,
        )
        self.processing = LoopHistogram(
            "gateway_processing_seconds", "Engine time per message", buckets=BUCKETS, registry=r
        )
        self.inflight = Gauge(
            "gateway_inflight",
            "Messages taken from the site but not yet safe (awaiting the cloud's PUBACK, the spool commit, or room "
            "in a full spool)",
            registry=r,
        )
        self.delivery = LoopHistogram(
            "gateway_delivery_seconds",
            "Receipt at the site to safe: the cloud's PUBACK, or the spool's commit while the cloud is away",
            ["policy"], buckets=DELIVERY_BUCKETS, registry=r,
        )
        self.last_forward = LoopCounter(
            "gateway_last_forward_timestamp_seconds",
            "Unix time of the last message the cloud acknowledged (direct or drained from the spool); 0 = none yet",
            registry=r, kind="gauge",
        )
        self.spool_oldest_age = Gauge(
            "gateway_spool_oldest_age_seconds", "Age of the oldest message waiting in the spool (0 when empty)",
            registry=r,
        )
        self.spool_max_bytes = Gauge(
            "gateway_spool_max_bytes", "The spool's capacity ([spool] max_bytes), for spool_bytes / max_bytes",
            registry=r,
        )
        self.key = Info("gateway_key", "The active key's id (never key material)", registry=r)
        self.spool_depth = Gauge("gateway_spool_depth", "Messages waiting in the spool", registry=r)
        self.spool_bytes = Gauge("gateway_spool_bytes", "Bytes waiting in the spool", registry=r)
        self.connected = Gauge("gateway_connected", "1 while connected to the broker", ["side"], registry=r)
        self.reconnects = PromCounter("gateway_reconnects_total", "Broker reconnections", ["side"], registry=r)
        self.session_sweeps = PromCounter(
            "gateway_session_sweeps_total", "Old local sessions swept at start (result: ok|failed)", ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):
            self.session_sweeps.labels(result)
        self.config_reload_success = Gauge(
            "gateway_config_last_reload_success", "1 if the last config load (start or SIGHUP) was applied", registry=r
        )
        self.config_reload_time = Gauge(
            "gateway_config_last_reload_timestamp_seconds", "When the config in force was loaded (Unix time)",
            registry=r,
        )
        self.policy_reloads = PromCounter(
            "gateway_policy_reloads_total", "Policy reloads by result (ok|refused)", ["result"], registry=r
        )
        self.build = Info("gateway_build", "Gateway build", registry=r)
        self.build.info({"version": _package_version(), "python": platform.python_version()})
        self.policy_info = Gauge(
            "gateway_policy_info", "Loaded policies (1 each)", ["policy", "version", "sha256"], registry=r
        )
        self.uplink_acked = LoopCounter(
            "gateway_uplink_acked", "Messages the cloud broker acknowledged (PUBACK)", registry=r
        )
        self.cloud_refused = PromCounter(
            "gateway_cloud_refused_total",
            "Publishes the cloud refused (PUBACK reason >= 0x80, e.g. 0x87 not authorised); retried, then quarantined",
            ["reason"], registry=r,
        )
        self.spool_errors = PromCounter(
            "gateway_spool_errors_total", "Spool operations that failed (disk full, I/O, busy, corrupt), by op",
            ["op"], registry=r,
        )
        for op in ("append", "delete", "peek", "compact", "quarantine", "drain"):
            self.spool_errors.labels(op)
        self.spool_quarantine_dropped = PromCounter(
            "gateway_spool_quarantine_dropped_total",
            "Oldest quarantined messages dropped to keep the quarantine within a tenth of max_bytes", registry=r,
        )
        self.spool_quarantined = Gauge(
            "gateway_spool_quarantined",
            "Messages in the spool's quarantine (refused by the cloud; gateway spool list)",
            registry=r,
        )
        self.spooled = PromCounter("gateway_spooled_total", "Messages written to the spool", registry=r)
        self.spool_refused = PromCounter(
            "gateway_spool_refused_total", "Messages the full spool refused (left unacknowledged at the local broker)",
            registry=r,
        )
        self.spool_expired = PromCounter(
            "gateway_spool_expired_total", "Spooled messages whose MQTT 5 expiry passed before delivery", registry=r
        )
        self.redelivered = PromCounter(
            "gateway_redelivered_total", "Messages the local broker redelivered (DUP): possible duplicates upstream",
            registry=r,
        )
        self.dead_lettered = PromCounter(
            "gateway_dead_lettered_total", "Rejected messages sealed and published to the local dead-letter topic",
            registry=r,
        )
        self.dead_letters_unsent = PromCounter(
            "gateway_dead_letters_unsent_total", "Dead letters not published: the local broker was away", registry=r
        )
        self.consent_updates = PromCounter(
            "gateway_consent_updates_total",
            "Consent records read, by result (granted|revoked|expired|unauthenticated|stale|invalid|full)", ["result"],
            registry=r,
        )
        self.consent_entries = Gauge("gateway_consent_entries", "Consent grants held (max_entries)", registry=r)
        for result in ("granted", "revoked", "expired", "unauthenticated", "stale", "invalid", "full"):
            self.consent_updates.labels(result)
        for side in ("local", "cloud"):  # export 0 before the first connection attempt
            self.connected.labels(side).set(0)
            self.reconnects.labels(side)
        for result in ("ok", "refused"):
            self.policy_reloads.labels(result)
        self.http_refused = PromCounter(
            "gateway_http_refused_total",
            "Connections to /metrics /healthz /readyz closed by the server (reason: limit|timeout)", ["reason"],
            registry=r,
        )
        for reason in ("limit", "timeout"):
            self.http_refused.labels(reason)
        self.worker_restarts = PromCounter(
            "gateway_worker_restarts", "Times the supervisor restarted this worker (--workers N)", registry=r
        )
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            r.register(collector)
        self._engine = _EngineCollector()
        r.register(self._engine)
        self._per_policy: dict[str, tuple[_Series, _Series]] = {}
        self._processing = self.processing.labels().observe
        self._delivery: dict[str, Callable[[float], None]] = {}

    def register_gt06(self, counters: Any) -> None:
        """Export a GT06 listener's counters, read through their ``snapshot()`` at scrape time."""
        self.register_ingest("gt06", "GT06 listener", "tracker", counters)

    def register_ingest(self, name: str, what: str, device: str, counters: Any) -> None:
        """Export a tracker listener's counters as ``gateway_<name>_events{event}`` and
        ``gateway_<name>_connections`` (open now), read through ``snapshot()`` at scrape time."""

        class _Ingest(Collector):
            def collect(self) -> Iterator[Metric]:
                values = counters.snapshot()
                open_now = values.pop("open_connections")
                events = CounterMetricFamily(
                    f"gateway_{name}_events", f"{what} events (connections, frames, bad input)", labels=["event"]
                )
                for event, value in values.items():
                    events.add_metric([event], value)
                yield events
                yield GaugeMetricFamily(f"gateway_{name}_connections", f"Open {device} connections", open_now)

        self.registry.register(_Ingest())

    def register_engine(self, engine: Engine) -> None:
        """Export ``engine``'s plans; call again with the new engine after a hot reload."""
        self._engine.engine = engine
        self.policy_info.clear()
        for plan in engine.plans:
            self.policy_info.labels(plan.name, str(plan.policy.policy.version), plan.source.sha256[:12]).set(1)
            self.messages_in.labels(plan.name)
            self.messages_out.labels(plan.name)
            self.delivery.labels(plan.name)
        kids = sorted({plan.key_id for plan in engine.plans})
        self.key.info({"key_id": ",".join(kids)})

    def watch(self, backlog: Callable[[], int], oldest: Callable[[], float | None], max_bytes: int = 0) -> None:
        """Read the uplink's backlog and the spool's oldest entry (its ``time.time()``) at scrape time."""
        self.spool_max_bytes.set(max_bytes)
        self.inflight.set_function(backlog)
        self.spool_oldest_age.set_function(lambda: max(0.0, time.time() - t) if (t := oldest()) else 0.0)

    def on_safe(self, policy: str, received: float, ack: Callable[[], None] | None) -> Callable[[], None]:
        """Wrap ``ack`` (the acknowledgement owed to the site) to time the message's delivery first.

        ``received`` is ``time.monotonic()`` at receipt. The uplink calls the result
        exactly when the message is safe, so this is the one place that knows.
        """
        observe = self._delivery.get(policy)
        if observe is None:
            observe = self._delivery[policy] = self.delivery.labels(policy).observe

        def safe() -> None:
            observe(time.monotonic() - received)
            if ack is not None:
                ack()

        return safe

    def observe(self, result: Forward | Reject, seconds: float, policy: str | None = None) -> None:
        """Count one processed message.

        Labels come only from the engine and the policy: the plan's name (or
        ``policy`` when no plan matched), the reason code, and for leaks the
        rule label and detector name. ``Reject.detail`` is only used as the
        detector of a leak, never otherwise, so a path cannot widen cardinality.
        """
        plan: Plan | None = result.plan
        name = plan.name if plan is not None else (policy or NO_POLICY)
        children = self._per_policy.get(name)
        if children is None:  # resolve the policy's series once
            children = self._per_policy[name] = (self.messages_in.labels(name), self.messages_out.labels(name))
        children[0].value += 1
        self._processing(seconds)
        if not isinstance(result, Reject):
            children[1].value += 1
            return
        self.dropped.labels(name, result.reason).inc()
        if result.reason == "leak":
            self.leaks.labels(name, result.rule, result.detail).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def merge_pages(pages: dict[str, str], own: CollectorRegistry | None = None) -> bytes:
    """One /metrics page from several workers' pages: each sample gains a ``worker`` label.

    How ``gateway run --workers N`` offers one scrape target: the supervisor fetches
    each worker's page (on a loopback port of its own) at scrape time and merges the
    families, so counters stay per worker (``sum()`` them in queries) and a worker
    restart is a counter reset Prometheus already handles. ``own`` adds the
    supervisor's own metrics.
    """
    families: dict[str, Metric] = {}
    for worker, text in pages.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:  # a truncated page (the worker died mid-answer): left out of this scrape
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples += [s._replace(labels={**s.labels, "worker": worker}) for s in family.samples]

    class _Merged(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return (generate_latest(own) if own is not None else b"") + generate_latest(registry)


# -- HTTP ----------------------------------------------------------------------------------

HTTP_MAX_CONNECTIONS = 16  # scrapers and probes need a few; more is a misbehaving client
HTTP_TIMEOUT_S = 5.0  # per socket read or write
HTTP_DEADLINE_S = 10.0  # a whole connection, however slowly it trickles


class ListenError(OSError):
    """An address the gateway must listen on cannot be bound; ``strerror`` names host and port."""


class _Server(ThreadingHTTPServer):
    """A thread per connection, but at most ``max_connections`` of them, each with a deadline.

    Over the cap a connection is closed at once (counted); a connection older than
    the deadline is shut down by the serving thread (counted). Errors in a request
    become one rate-limited JSON event with the error type: never the peer's address
    or a traceback on stderr.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # a burst waits in the kernel's queue, not in threads

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], metrics: Any,
                 max_connections: int, deadline_s: float) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_connections = max_connections
        self._open: dict[Any, float] = {}
        self._open_lock = threading.Lock()
        self._refused = getattr(metrics, "http_refused", None)  # the supervisor's merged page has none of its own
        self._deadline_s = deadline_s
        self._last_logged: dict[str, float] = {}
        self._log = get_logger("gateway.telemetry")
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if self._refused is not None:
                self._refused.labels("limit").inc()
            self._note("http_connection_limit", limit=self._max_connections)
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._open_lock:
            if self._open.pop(request, None) is None:
                return
        self._slots.release()

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every poll interval: end connections past the deadline."""
        now = time.monotonic()
        with self._open_lock:
            late = [s for s, t in self._open.items() if now - t > self._deadline_s]
            for s in late:
                self._open[s] = float("inf")  # shut down once, counted once
        for s in late:
            if self._refused is not None:
                self._refused.labels("timeout").inc()
            self._note("http_connection_timeout", deadline_s=self._deadline_s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self._note("http_request_failed", exc=exc)

    def _note(self, event: str, exc: BaseException | None = None, **fields: Any) -> None:
        """Log ``event`` at most once a minute per kind (a flood of bad clients must not flood the log)."""
        key = event + (type(exc).__name__ if exc is not None else "")
        now = time.monotonic()
        if now - self._last_logged.get(key, -math.inf) < 60:
            return
        self._last_logged[key] = now
        self._log.warning(event, exc_info=exc, note="further ones within a minute are only counted", **fields)

    def shutdown(self) -> None:
        """Stop serving and release the port (one call, so callers cannot forget the second)."""
        super().shutdown()
        self.server_close()


def serve(
    metrics: Metrics,
    host: str = "127.0.0.1",
    port: int = 9464,
    ready: Callable[[], bool] = lambda: True,
    detail: Callable[[], str] = lambda: "",
    *,
    max_connections: int = HTTP_MAX_CONNECTIONS,
    timeout_s: float = HTTP_TIMEOUT_S,
    deadline_s: float = HTTP_DEADLINE_S,
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread; ``server.shutdown()`` stops it.

    Loopback by default: metrics describe the site's traffic and need no
    exposure beyond a local scraper unless the operator chooses so. ``port=0``
    picks a free port (see ``server.server_address``). Raises :class:`ListenError`
    naming the address when it cannot be bound.
    """
    log = get_logger("gateway.telemetry")

    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # StreamRequestHandler applies it to every read and write

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                ok = ready()  # ``detail``: lines for an operator (e.g. the spool's state), no message data
                body = ("ready\n" if ok else "not ready\n") + detail()
                self._reply(200 if ok else 503, body.encode())
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the log; and the default names the peer

    try:
        server = _Server((host, port), Handler, metrics, max_connections, deadline_s)
    except OSError as exc:
        raise ListenError(exc.errno, f"{host}:{port}: {exc.strerror or type(exc).__name__}") from None
    thread = threading.Thread(target=server.serve_forever, name="telemetry-http", daemon=True)
    thread.start()
    log.info("telemetry_listening", host=server.server_address[0], port=server.server_address[1])
    return server
