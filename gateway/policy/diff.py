"""What a policy change would change: ``gateway diff`` offline, shadow packs live.

Both compare what two policies *forward* for the same message, never the raw
input: a difference is named by the output field path, the rule that governs it
and a kind:

- ``removed``: the old policy forwarded the field, the new one does not;
- ``added``: the new policy forwards a field the old one did not;
- ``value_changed``: both forward it, with different values;
- ``now_dropped`` / ``now_forwarded``: the whole message changes fate (path ``*``);
- ``topic_changed``: the upstream topic differs (path ``topic``).

The rule is the operation each policy applies to that path (``round``, or
``keep -> round`` when the change is of operation), or for a message's fate the
drop reason and rule. Examples carry the values as minimised by each policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from gateway.pipeline import Forward, Reject
from gateway.policy.check import decode_output
from gateway.policy.compile import Node, Plan

KINDS = ("removed", "added", "value_changed", "now_dropped", "now_forwarded", "topic_changed")
MISSING: Any = msgspec.UNSET  # a path one side does not forward


class Change(msgspec.Struct, frozen=True, gc=False):
    path: str
    rule: str
    kind: str
    old: Any = None  # as minimised by the old policy (or the drop reason)
    new: Any = None  # as minimised by the new policy


def leaves(value: Any, path: str = "") -> dict[str, list[Any]]:
    """Leaf values by path (``a.b``, ``list[]``), in order; an empty object or list is a leaf."""
    out: dict[str, list[Any]] = {}

    def walk(v: Any, p: str) -> None:
        if isinstance(v, dict) and v:
            for k, sub in v.items():
                walk(sub, f"{p}.{k}" if p else str(k))
        elif isinstance(v, list) and v:
            for sub in v:
                walk(sub, p + "[]")
        else:
            out.setdefault(p, []).append(v)

    walk(value, path)
    return out


def rule_ops(plan: Plan | None) -> dict[str, str]:
    """The operation a plan applies to each declared output path (``[]`` for arrays)."""
    ops: dict[str, str] = {}
    if plan is None:
        return ops

    def walk(node: Node, prefix: str) -> None:
        for key, step in node.steps.items():
            path = f"{prefix}.{key}" if prefix else key
            if step.array:
                path += "[]"
            if step.rule is not None:
                ops[path] = step.op
            elif step.child is not None:
                walk(step.child, path)

    walk(plan.root, "")
    return ops


def _op(ops: Mapping[str, str], path: str) -> str:
    """The rule of ``path``: its own, else the nearest declared ancestor's (a kept object keeps its children)."""
    probe = path
    while probe:
        if probe in ops:
            return ops[probe]
        cut = max(probe.rfind("."), probe.rfind("[]") if probe.endswith("[]") else -1)
        probe = probe[:cut] if cut > 0 else ""
    return "undeclared"


def _rule(old_ops: Mapping[str, str], new_ops: Mapping[str, str], path: str) -> str:
    a, b = _op(old_ops, path), _op(new_ops, path)
    return a if a == b else f"{a} -> {b}"


def _fate(result: Reject) -> str:
    return f"{result.reason}:{result.rule}" if result.rule else result.reason


def _output(result: Forward) -> Any:
    return decode_output(result.payload, result.plan.policy.policy.output)


def compare(old: Forward | Reject, new: Forward | Reject) -> list[Change]:
    """The differences between two policies' results for one message ([] = the same)."""
    if isinstance(old, Reject) and isinstance(new, Reject):
        return []
    if isinstance(old, Reject):
        assert isinstance(new, Forward)
        return [Change("*", _fate(old), "now_forwarded", old.reason, _output(new))]
    if isinstance(new, Reject):
        return [Change("*", _fate(new), "now_dropped", _output(old), new.reason)]
    changes = []
    if old.topic != new.topic:
        changes.append(Change("topic", "route", "topic_changed", old.topic, new.topic))
    if old.payload == new.payload and old.plan.policy.policy.output == new.plan.policy.policy.output:
        return changes
    a, b = leaves(_output(old)), leaves(_output(new))
    if a == b:
        return changes
    old_ops, new_ops = rule_ops(old.plan), rule_ops(new.plan)
    for path in sorted(a.keys() | b.keys()):
        va, vb = a.get(path, MISSING), b.get(path, MISSING)
        if va == vb:
            continue
        rule = _rule(old_ops, new_ops, path)
        if vb is MISSING:
            changes.append(Change(path, rule, "removed", _one(va), None))
        elif va is MISSING:
            changes.append(Change(path, rule, "added", None, _one(vb)))
        else:
            changes.append(Change(path, rule, "value_changed", _one(va), _one(vb)))
    return changes


def _one(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


class Summary(msgspec.Struct):
    """Counts by (path, rule, kind) over a stream, with a few examples each."""

    messages: int = 0
    changed: int = 0
    bad_lines: int = 0
    changes: dict[tuple[str, str, str], int] = msgspec.field(default_factory=dict)
    examples: dict[tuple[str, str, str], list[dict[str, Any]]] = msgspec.field(default_factory=dict)

    def add(self, changes: Iterable[Change], topics: tuple[str | None, str | None], examples: int = 3) -> None:
        self.messages += 1
        seen = False
        for c in changes:
            seen = True
            key = (c.path, c.rule, c.kind)
            self.changes[key] = self.changes.get(key, 0) + 1
            shown = self.examples.setdefault(key, [])
            if len(shown) < examples:
                shown.append({"old_topic": topics[0], "new_topic": topics[1], "old": c.old, "new": c.new})
        self.changed += seen

    def to_json(self) -> dict[str, Any]:
        rows = [{"path": p, "rule": r, "kind": k, "messages": n, "examples": self.examples[(p, r, k)]}
                for (p, r, k), n in sorted(self.changes.items(), key=lambda kv: (-kv[1], kv[0]))]
        return {"messages": self.messages, "changed_messages": self.changed, "bad_lines": self.bad_lines,
                "changes": rows}
