"""What compiled plans call at run time: the result types and the helpers of the generated code.

gateway/policy/codegen.py imports these names and puts them in the namespace of the code it
generates (``RUNTIME``); gateway/pipeline.py's dict interpreter uses the same functions, so
both runners reject for the same reasons and count the same events in ``plan.stats``.
A ``Reject`` never carries a payload value: a reason code, the rule's label and at most a
path or detector name taken from the policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from msgspec import UNSET, DecodeError, ValidationError

from gateway.ops.identity import AffixRefused
from gateway.policy.stats import SAMPLED_MESSAGES, UNKNOWN_FIELDS

if TYPE_CHECKING:
    from gateway.policy.compile import Condition, Location, Node, Plan, Step

NO_CONSENT: Mapping[str, frozenset[str]] = {}
EMPTY: frozenset[str] = frozenset()
_AT = re.compile(r" - at `\$\.?(.*)`$")


class Forward(NamedTuple):
    topic: str
    payload: bytes
    plan: Plan
    unknown: int = 0  # undeclared fields removed


class Reject(NamedTuple):
    reason: str
    plan: Plan | None = None
    rule: str = ""  # label of the rule that decided (from the policy)
    detail: str = ""  # a declared path or a detector name, never payload data


class TooDeep(Exception):
    """Raised by the guard's walk of a kept free-form value past max_depth."""


def granted_of(plan: Plan, obj: Any, device: str | None, consents: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The purposes the message's device consented to (``device`` from the topic, else the payload)."""
    if consents is NO_CONSENT:  # nothing on record: skip the lookups
        return EMPTY
    if device is not None:
        return consents.get(device, EMPTY)
    if plan.device_steps is not None:
        device = read(obj, plan.device_steps, plan.structs)
        if device.__class__ is msgspec.Raw:
            device = msgspec.json.decode(device)
        if device is not UNSET and device is not None:
            return consents.get(str(device), EMPTY)
    return EMPTY


def sample_unknown(plan: Plan, payload: bytes) -> int:
    """Undeclared fields of one message, counted into the plan's stats (the sampled path)."""
    try:
        unknown = count_unknown(plan.root, msgspec.json.decode(payload), plan.max_depth)
    except (RecursionError, ValueError):  # ValueError: bad UTF-8 in a field the Struct skipped
        unknown = 0
    plan.stats[UNKNOWN_FIELDS] += unknown
    plan.stats[SAMPLED_MESSAGES] += 1
    return unknown


def count_unknown(node: Node, value: Any, depth: int) -> int:
    """Undeclared fields in a decoded payload (only on the rare path where there are some)."""
    if value.__class__ is not dict or depth <= 0:
        return 0
    n = 0
    for k, v in value.items():
        step = node.steps.get(k)
        if step is None:
            n += 1
        elif step.child is not None:
            for element in v if step.array and v.__class__ is list else (v,):
                n += count_unknown(step.child, element, depth - 1)
    return n


def refused(plan: Plan, label: str) -> Reject:
    """A value lacks the shape its rule needs (``on_mismatch = "reject"``)."""
    plan.stats[(label, "bad_shape")] += 1
    return Reject("bad_shape", plan, label)


def invalid(plan: Plan, message: str) -> Reject:
    """The rejection for a msgspec ValidationError ``message``, naming only a declared path."""
    m = _AT.search(message)
    path = re.sub(r"\[\d+\]", "[]", m.group(1)) if m else ""
    detail = path if path in plan.paths else ""  # only paths the policy itself names
    null_required = m is not None and "[" not in m.group(1) and message.endswith(f"got `null` - at `$.{m.group(1)}`")
    if message.startswith("Object missing required field") or null_required:
        return Reject("missing_field", plan, detail=detail)
    if message.startswith("Expected `object`") and not path:
        return Reject("not_object", plan)
    return Reject("wrong_type", plan, detail=detail)


def read(obj: Any, steps: list[Step], structs: bool) -> Any:
    """The value at ``steps`` (a path, root first) of a decoded Struct or dict; UNSET if absent."""
    for step in steps:
        if obj is UNSET or obj is None:
            return UNSET
        obj = getattr(obj, step.attr) if structs else obj.get(step.key, UNSET)
    return obj


def holds(cond: Condition, obj: Any, structs: bool) -> bool:
    """A ``drop_when`` condition holds: its test passes and its ``unless`` test (if any) does not."""
    if not cond.test(read(obj, cond.steps, structs)):
        return False
    return cond.unless_test is None or not cond.unless_test(read(obj, cond.unless_steps or [], structs))


def coarsen(loc: Location, lat: Any, lon: Any, granted: frozenset[str]) -> Any:
    """The new (lat, lon); UNSET to leave both alone; a lone coordinate is removed."""
    if (lat is UNSET and lon is UNSET) or (lat is None and lon is None):
        return UNSET
    loc.count += 1
    if lat is None or lon is None or lat is UNSET or lon is UNSET:
        return UNSET, UNSET  # a lone coordinate is still precise
    point = loc.fn(lat, lon, loc.rule.consent in granted)
    return (UNSET, UNSET) if point is None else point


# The names the generated code uses, as it spells them.
RUNTIME: dict[str, Any] = {
    "Forward": Forward, "Reject": Reject, "TooDeep": TooDeep, "invalid": invalid,
    "sample_unknown": sample_unknown, "granted_of": granted_of, "holds": holds, "read": read, "refused": refused,
    "coarsen": coarsen, "NO_CONSENT": NO_CONSENT, "EMPTY": EMPTY, "AffixRefused": AffixRefused,
    "ValidationError": ValidationError, "DecodeError": DecodeError,
}  # fmt: skip
