"""Logs, metrics and the health endpoints, kept apart from the pure engine.

Everything an operator can see comes from the policy or the engine (policy name,
reason code, rule label, detector name, operation name): never a payload value,
a topic level or a device id. A metrics or log pipeline is usually far less
protected than the data path, so it must not become the leak the gateway exists
to prevent.
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
import time
from collections import Counter
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
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.compile import Plan

__all__ = ["REDACTED_KEYS", "Metrics", "configure_logging", "get_logger", "merge_pages", "redact_payloads", "serve"]

# -- logging -------------------------------------------------------------------------------

REDACTED_KEYS = frozenset({"payload", "message", "value", "raw", "input"})


def redact_payloads(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop event keys that would carry message content (payload, message, value, raw, input).

    Defence in depth: the code never logs payload values, but one careless
    ``log.info("x", payload=...)`` would ship personal data to wherever logs go.
    This processor runs before every renderer, so such a slip cannot reach output.
    """
    for key in [k for k in event_dict if k.lower() in REDACTED_KEYS]:
        del event_dict[key]
    return event_dict


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger with a ``name``, so ``add_logger_name`` works without stdlib logging."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("logger", getattr(logger, "name", "") or "gateway")
    return event_dict


def configure_logging(json: bool | None = None, level: str = "info", file: TextIO | None = None) -> None:
    """Configure structlog in one place for the whole process.

    ``json=None`` picks: a readable console renderer when stderr is a TTY (a
    person is watching), JSON lines otherwise (a collector is parsing).
    ``file`` defaults to stderr, so stdout stays free for command output.
    """
    out = file if file is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_payloads,
        structlog.processors.StackInfoRenderer(),
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *args: _NamedPrintLogger(out, str(args[0]) if args else ""),
        cache_logger_on_first_use=False,  # reconfiguration (tests, reload) must take effect
    )


def get_logger(name: str) -> Any:
    """A lazy logger whose lines carry ``logger=<name>``; safe to create at import time."""
    return structlog.get_logger(name)


# -- metrics -------------------------------------------------------------------------------

# No `*_created` series: they double the series count and no dashboard or alert reads them.
disable_created_metrics()

# Engine time per message: the hot path is microseconds; tens of ms means trouble.
BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2)
# Receipt at the site to safe (cloud PUBACK or spool commit): milliseconds when healthy,
# seconds under load or while the spool takes over, never more than a minute or two.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
NO_POLICY = "none"  # policy label of a message no policy routes
_SAMPLED = {"unknown_field", "unknown_field_sampled_messages"}


def _package_version() -> str:
    try:
        return metadata.version("telemetry-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def _snapshot(stats: Counter) -> list[tuple[tuple[str, str], int]]:
    """Copy a Counter the engine thread may be growing while we scrape."""
    for _ in range(5):
        try:
            return list(stats.items())
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return []


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
            for op, n in sorted(plan.action_counts().items()):
                actions.add_metric([plan.name, op], n)
            stats = dict(_snapshot(plan.stats))
            unknown.add_metric([plan.name], stats.get(("", "unknown_field"), 0))
            sampled.add_metric([plan.name], stats.get(("", "unknown_field_sampled_messages"), 0))
            skip = _SAMPLED | {"leak"} | {c.rule.reason for c in plan.conditions}  # observe() counts these
            for (rule, event), n in sorted(stats.items()):
                if event not in skip:
                    events.add_metric([plan.name, rule, event], n)
        yield from (actions, unknown, sampled, events)


class Metrics:
    """All gateway metrics, in a private registry (tests and workers never collide)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.messages_in = PromCounter("gateway_messages_in_total", "Messages received", ["policy"], registry=r)
        self.messages_out = PromCounter("gateway_messages_out_total", "Messages forwarded", ["policy"], registry=r)
        self.dropped = PromCounter(
            "gateway_messages_dropped_total", "Messages not forwarded", ["policy", "reason"], registry=r
        )
        self.leaks = PromCounter(
            "gateway_leaks_blocked_total",
            "Messages stopped by the leak guard",
            ["policy", "rule", "detector"],
            registry=r,
        )
        self.processing = Histogram(
            "gateway_processing_seconds", "Engine time per message", buckets=BUCKETS, registry=r
        )
        self.inflight = Gauge(
            "gateway_inflight",
            "Messages taken from the site but not yet safe (awaiting the cloud's PUBACK, the spool commit, or room "
            "in a full spool)",
            registry=r,
        )
        self.delivery = Histogram(
            "gateway_delivery_seconds",
            "Receipt at the site to safe: the cloud's PUBACK, or the spool's commit while the cloud is away",
            ["policy"], buckets=DELIVERY_BUCKETS, registry=r,
        )
        self.last_forward = Gauge(
            "gateway_last_forward_timestamp_seconds",
            "Unix time of the last message the cloud acknowledged (direct or drained from the spool); 0 = none yet",
            registry=r,
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
            "gateway_config_last_reload_timestamp_seconds", "When the config in force was loaded (Unix time)", registry=r
        )
        self.policy_reloads = PromCounter(
            "gateway_policy_reloads_total", "Policy reloads by result (ok|refused)", ["result"], registry=r
        )
        self.build = Info("gateway_build", "Gateway build", registry=r)
        self.build.info({"version": _package_version(), "python": platform.python_version()})
        self.policy_info = Gauge(
            "gateway_policy_info", "Loaded policies (1 each)", ["policy", "version", "sha256"], registry=r
        )
        self.uplink_acked = PromCounter(
            "gateway_uplink_acked_total", "Messages the cloud broker acknowledged (PUBACK)", registry=r
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
        self.spool_quarantined = Gauge(
            "gateway_spool_quarantined", "Messages in the spool's quarantine (refused by the cloud; gateway spool list)",
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
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            r.register(collector)
        self._engine = _EngineCollector()
        r.register(self._engine)
        self._per_policy: dict[str, tuple[Any, Any]] = {}
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
        if children is None:  # labels() costs a lock and a dict build: resolve once per policy
            children = self._per_policy[name] = (self.messages_in.labels(name), self.messages_out.labels(name))
        children[0].inc()
        self.processing.observe(seconds)
        if result.__class__ is Forward:
            children[1].inc()
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def shutdown(self) -> None:
        """Stop serving and release the port (one call, so callers cannot forget the second)."""
        super().shutdown()
        self.server_close()


def serve(
    metrics: Metrics, host: str = "127.0.0.1", port: int = 9464, ready: Callable[[], bool] = lambda: True,
    detail: Callable[[], str] = lambda: "",
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread; ``server.shutdown()`` stops it.

    Loopback by default: metrics describe the site's traffic and need no
    exposure beyond a local scraper unless the operator chooses so. ``port=0``
    picks a free port (see ``server.server_address``).
    """
    log = get_logger("gateway.telemetry")

    class Handler(BaseHTTPRequestHandler):
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
            pass  # scrapes every few seconds would drown the log

    server = _Server((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="telemetry-http", daemon=True)
    thread.start()
    log.info("telemetry_listening", host=server.server_address[0], port=server.server_address[1])
    return server
