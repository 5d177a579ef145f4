"""Every count one compiled plan keeps, read through one ``snapshot()``.

The hot path counts where it is cheapest: operations count events as ``(rule label, event)``
in this Counter (their ``BuildEnv.stats``), the interpreter counts how often each step acted
on the step (``step.count``, ``loc.count``), and the generated runner keeps its counts in
local cells it reports through ``tallies()``. ``PlanStats`` is the one object that knows
all three, so telemetry, the demo and tests read a ``Snapshot`` and need not know where
a count was kept nor which counts the per-message metrics already cover.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from gateway.policy.compile import Node

# Keys of the message-level counts of undeclared fields (sampled: see Engine.unknown_sample).
UNKNOWN_FIELDS = ("", "unknown_field")
SAMPLED_MESSAGES = ("", "unknown_field_sampled_messages")
# Events that reject the whole message: the per-message metrics count them by reason
# (gateway_messages_dropped_total, gateway_leaks_blocked_total), so they are no field event.
MESSAGE_EVENTS = frozenset({"leak"})


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A plan's counts at one moment."""

    actions: dict[str, int]  # operation name -> how often it acted (coarsen_location: points)
    unknown_fields: int  # undeclared fields removed, in sampled messages
    sampled_messages: int  # messages sampled for undeclared fields
    field_events: list[tuple[str, str, int]]  # (rule label, event, count): invalid values, privacy zones...


class PlanStats(Counter[tuple[str, str]]):
    """The ``(rule label, event) -> count`` Counter of one plan, plus where its other counts live."""

    def __init__(self) -> None:
        super().__init__()
        self._root: Node | None = None
        self._message_reasons: frozenset[str] = MESSAGE_EVENTS
        self._tallies: Callable[[], Iterable[tuple[str, int]]] | None = None

    def bind(self, root: Node, drop_reasons: Iterable[str]) -> None:
        """The compiled plan's step tree and its drop_when reasons (message-level events)."""
        self._root = root
        self._message_reasons = MESSAGE_EVENTS | frozenset(drop_reasons)

    def track(self, tallies: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """The generated runner's ``tallies()``: ``[(operation, count)]`` it keeps in local cells."""
        self._tallies = tallies

    def actions(self) -> Counter[str]:
        """How often each operation acted so far (``coarsen_location`` counts points)."""
        counts: Counter[str] = Counter()
        nodes = [self._root] if self._root is not None else []
        while nodes:
            node = nodes.pop()
            for step in node.leaves + node.drops:
                counts[step.op] += step.count
            for loc in node.locations:
                counts["coarsen_location"] += loc.count
            nodes.extend(step.child for step in node.children if step.child is not None)
        for op, n in self._tallies() if self._tallies is not None else ():
            counts[op] += n
        return counts

    def snapshot(self) -> Snapshot:
        """All counts, safe to call from another thread while the engine keeps counting."""
        events = dict(self._items())
        skip = {UNKNOWN_FIELDS[1], SAMPLED_MESSAGES[1]} | self._message_reasons
        return Snapshot(
            actions=dict(self.actions()),
            unknown_fields=events.get(UNKNOWN_FIELDS, 0),
            sampled_messages=events.get(SAMPLED_MESSAGES, 0),
            field_events=sorted((rule, event, n) for (rule, event), n in events.items() if event not in skip),
        )

    def _items(self) -> list[tuple[tuple[str, str], int]]:
        for _ in range(5):
            try:
                return list(self.items())
            except RuntimeError:  # dictionary changed size during iteration (the engine thread)
                continue
        return []
