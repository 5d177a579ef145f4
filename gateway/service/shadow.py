"""Shadow policies: candidate packs run beside the active ones on the live stream.

A shadow pack sees every message the active packs see, forwards nothing, writes
nothing to the spool, and counts what it would have done differently (the kinds
of ``gateway diff``), so a policy change can be judged on real traffic before it
goes live. It is checked like any pack (inline tests, signatures when trusted
keys are configured) and fenced: an error in a shadow costs a counted shadow
error, never the live message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.diff import KINDS, compare
from gateway.telemetry import get_logger

log = get_logger("gateway.shadow")


class ShadowMetrics:
    """The shadow counters, registered once per worker registry (a reload swaps engines, not series)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = PromCounter(
            "gateway_shadow_messages_total", "Messages a shadow policy also processed", ["policy"], registry=registry
        )
        self.differences = PromCounter(
            "gateway_shadow_differences_total",
            f"Messages a shadow policy would have minimised differently, by rule and kind ({', '.join(KINDS)})",
            ["policy", "rule", "kind"], registry=registry,
        )
        self.errors = PromCounter(
            "gateway_shadow_errors_total", "Shadow evaluations that raised (the live message is unaffected)",
            registry=registry,
        )


class Shadow:
    """One engine holding every shadow pack, compared with the active result of each message."""

    def __init__(self, engine: Engine, metrics: ShadowMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self._logged: set[str] = set()
        self._seen: dict[str, Any] = {}  # policy -> its messages counter (labels() costs more than inc())

    @property
    def policies(self) -> list[str]:
        return [p.name for p in self.engine.plans]

    def observe(
        self, topic: str, payload: bytes, active: Forward | Reject, now: float, consents: Mapping[str, frozenset[str]]
    ) -> None:
        """Run the shadow packs on one message and count how their result differs from ``active``."""
        try:
            result = self.engine.process(topic, payload, now, consents)
            if result.plan is None:
                return  # no shadow pack covers this topic
            name = result.plan.name
            seen = self._seen.get(name)
            if seen is None:
                seen = self._seen[name] = self.metrics.messages.labels(name)
            seen.inc()
            counted: set[tuple[str, str]] = set()
            for change in compare(active, result):
                if (change.rule, change.kind) not in counted:  # a message counts once per rule and kind
                    counted.add((change.rule, change.kind))
                    self.metrics.differences.labels(name, change.rule, change.kind).inc()
        except Exception as exc:  # the shadow must never cost the live path anything but time
            self.metrics.errors.inc()
            if exc.__class__.__name__ not in self._logged:
                self._logged.add(exc.__class__.__name__)
                log.error("shadow_error", error=exc.__class__.__name__, action="shadow result ignored")
