"""``gateway explain``: what a policy does to one message, field by field, and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.pipeline import NO_CONSENT, REASONS, Engine, Forward
from gateway.policy.check import decode_output
from gateway.policy.compile import Node, Plan

UNDECLARED = "not declared by the policy: removed (fail closed)"
UNDECLARED_KEEP = "not declared by the policy: kept (default = \"keep\")"


def explain(
    engine: Engine, topic: str, payload: bytes, consents: Mapping[str, frozenset[str]] = NO_CONSENT
) -> dict[str, Any]:
    """The explanation as plain data.

    ``{"input", "output", "topic", "dropped", "reason", "rule", "detail", "fields": [{"path", "action", "why"}]}``.
    """
    try:
        message = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        message = None
    hit = engine.route(topic)
    plan = hit[0] if hit else None
    result = engine.process(topic, payload, consents=consents)
    out: dict[str, Any] = {"input": message, "output": None, "topic": None, "dropped": True, "reason": None}
    if isinstance(result, Forward):
        out.update(
            output=decode_output(result.payload, result.plan.policy.policy.output), topic=result.topic, dropped=False
        )
    else:
        out.update(reason=result.reason, rule=result.rule, detail=result.detail)
        out["reason_text"] = REASONS.get(result.reason) or _drop_why(plan, result.reason)
    out["policy"] = plan.name if plan else None
    out["fields"] = field_actions(plan, message) if plan is not None else []
    return out


def _drop_why(plan: Plan | None, reason: str) -> str:
    for rule in plan.policy.drop_when if plan else ():
        if rule.reason == reason:
            return rule.why or f"drop_when {rule.path}"
    return ""


def field_actions(plan: Plan, message: Any) -> list[dict[str, str]]:
    """One entry per leaf path of the input (``[]`` for array elements)."""
    keep_default = plan.policy.policy.default == "keep"
    seen: dict[str, dict[str, str]] = {}

    def leaf(path: str, action: str, why: str) -> None:
        seen.setdefault(path, {"path": path, "action": action, "why": why})

    def walk(value: Any, node: Node | None, path: str, inherited: tuple[str, str] | None) -> None:
        if isinstance(value, dict) and value:
            for key, v in value.items():
                sub = f"{path}.{key}" if path else key
                step = node.steps.get(key) if node is not None and inherited is None else None
                if inherited is not None:
                    walk(v, None, sub, inherited)
                elif step is None:
                    walk(v, None, sub, ("keep", UNDECLARED_KEEP) if keep_default else ("drop", UNDECLARED))
                elif step.rule is not None:
                    target = (step.op, step.rule.why)
                    if step.array and isinstance(v, list):
                        for element in v:
                            walk(element, None, sub + "[]", target)
                    else:
                        walk(v, None, sub, target)
                elif step.child is not None:
                    if step.array and isinstance(v, list):
                        for element in v:
                            walk(element, step.child, sub + "[]", None)
                    else:
                        walk(v, step.child, sub, None)
                else:  # read by drop_when / device only
                    walk(v, None, sub, ("drop", UNDECLARED))
        elif isinstance(value, list) and value:
            for element in value:
                walk(element, None, path + "[]", inherited)
        else:
            action, why = inherited or ("drop", UNDECLARED)
            leaf(path, action, why)

    walk(message, plan.root, "", None)
    return list(seen.values())
