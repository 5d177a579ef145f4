"""The hot path: ``(topic, payload bytes) -> Forward | Reject``, pure and in memory.

Per message: route the topic (cached), check the size, one msgspec decode
(straight into the policy's Struct types), the message-level drops, the
compiled field steps, the leak guard over what is kept, one encode. No I/O, and
no raw value in any rejection: a ``Reject`` carries a reason code, the rule's
label and at most a path or detector name taken from the policy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import msgspec
from msgspec import UNSET

from gateway.keys import Keyring
from gateway.ops.base import BoundedCache, BuildEnv, Epochs
from gateway.ops.detect import ALL, NUMBER_LIMIT, classify_number, find, precise_pair
from gateway.ops.identity import AffixRefused, Pseudonymise
from gateway.policy import codegen
from gateway.policy.compile import COORDINATE_KEYS, Node, Plan, Step, compile_policy
from gateway.policy.load import Source
from gateway.policy.model import BUILT_IN_REASONS
from gateway.policy.topics import safe_level

REASONS = BUILT_IN_REASONS  # besides the ``reason`` of each policy's own drop_when rules
NO_CONSENT: Mapping[str, frozenset[str]] = {}
_EMPTY: frozenset[str] = frozenset()
_tuple_new = tuple.__new__
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


class _TooDeep(Exception):
    """Raised by the guard's walk of a kept free-form value past max_depth."""


class Engine:
    """Compiled policies plus the router. One per worker; not thread-safe."""

    def __init__(
        self,
        sources: list[Source],
        keyring: Keyring,
        cache_size: int = 65536,
        now: float | None = None,
        unknown_sample: int = 64,
    ):
        """``unknown_sample``: count undeclared fields in 1 message of N per policy (1: every message).

        Undeclared fields are always removed; counting them needs a second,
        schema-less decode, so by default only a sample pays for it."""
        if unknown_sample < 1:
            raise ValueError("unknown_sample must be >= 1")
        self.keyring = keyring
        self.unknown_sample = unknown_sample
        self.epochs = Epochs(now)
        self.plans = [compile_policy(s, keyring, self.epochs, cache_size) for s in sources]
        for plan in self.plans:
            if plan.structs:
                plan.run = codegen.build_runner(plan, unknown_sample, _kept_scanner(plan), _coarsen, _HELPERS)
            else:
                plan.run = partial(interpret, plan)
        # Fused pseudonymisers read their cache directly: re-key them as soon as an epoch rolls over.
        self._refresh = [
            step.fn.refresh for plan in self.plans for step in _leaves(plan.root) if hasattr(step.fn, "refresh")
        ]
        self._routes = BoundedCache(cache_size)
        self._generation = self.epochs.generation
        self._previous = _previous_devices(self.plans, keyring, self.epochs, cache_size)
        self._previous_by_topic = BoundedCache(cache_size)

    def route(self, topic: str) -> tuple[Plan, dict[str, str]] | None:
        """The first plan (in configuration order) whose filters match ``topic``."""
        levels = topic.split("/")
        for plan in self.plans:
            for f in plan.filters:
                captures = f.match(levels)
                if captures is not None:
                    return plan, captures
        return None

    def _resolve(self, topic: str) -> tuple[Plan | None, str | Reject | None, str | None]:
        """(plan, upstream topic or why there is none, device id from the topic)."""
        hit = self.route(topic)
        if hit is None:
            return None, None, None
        plan, captures = hit
        device = captures.get(plan.device_capture) if plan.device_capture else None
        values = {}
        for name, fn in plan.captures.items():
            if name in captures:
                try:
                    level = safe_level(fn(captures[name]))
                except AffixRefused:
                    return plan, _refused(plan, f"route.capture.{name}"), device
                if level is None:
                    return plan, None, device
                values[name] = level
                kept = plan.policy.route.capture[name].op_name() == "keep"
                if kept and plan.leak_guard:  # a topic level is forwarded like a kept field
                    hits = find(level, ALL - set(plan.policy.route.capture[name].guard_allow))
                    if hits:
                        return plan, Reject("leak", plan, f"route.capture.{name}", hits[0][0]), device
        return plan, plan.template.render(values), device

    def _entry(self, topic: str) -> tuple[Any, str | None, str | None]:
        """The route cache's entry for ``topic``: ``(run, upstream, device)``; ``run`` rejects
        every message at once when the topic has no route or no valid upstream topic."""
        plan, upstream, device = self._resolve(topic)
        if plan is None:
            return _rejecter(Reject("no_route")), None, None
        if upstream.__class__ is not str:
            return _rejecter(upstream if upstream is not None else Reject("bad_topic", plan)), None, None
        return plan.run, upstream, device

    def previous_device(self, topic: str) -> str | None:
        """The device's pseudonym under the key that was active before the last rotation, for
        ``topic``'s plan (``None``: no previous key, or the plan's device is no pseudonymised
        topic level). Call after ``process`` for the same topic, which keeps the epoch current."""
        if not self._previous:
            return None
        hit = self._previous_by_topic.get(topic, UNSET)
        if hit is not UNSET:
            return hit
        plan, _, device = self._resolve(topic)
        fn = self._previous.get(plan.name) if plan is not None else None
        value = None
        if fn is not None and device is not None:
            try:
                value = fn(device)
            except AffixRefused:
                value = None
        return self._previous_by_topic.put(topic, value)

    def _rollover(self) -> None:
        self._previous_by_topic.clear()
        self._routes.clear()  # pseudonyms in cached topics rolled over
        for refresh in self._refresh:
            refresh()
        self._generation = self.epochs.generation

    def process(
        self, topic: str, payload: bytes, now: float | None = None, consents: Mapping[str, frozenset[str]] = NO_CONSENT
    ) -> Forward | Reject:
        """Minimise one message. ``consents`` maps a device id to the purposes it consented to."""
        epochs = self.epochs
        if now is not None and not epochs.start <= now < epochs.boundary:
            epochs.advance(now)
        if epochs.generation != self._generation:
            self._rollover()
        entry = self._routes.get(topic)
        if entry is None:
            entry = self._routes.put(topic, self._entry(topic))
        run, upstream, device = entry
        return run(payload, upstream, device, consents)


def _previous_devices(plans: list[Plan], keyring: Keyring, epochs: Epochs, cache_size: int) -> dict[str, Any]:
    """Per plan whose device is a pseudonymised topic level: that pseudonymiser under the previous key."""
    if not keyring.previous:
        return {}
    previous = keyring.as_previous()
    out = {}
    for plan in plans:
        name = plan.device_capture
        rule = plan.policy.route.capture.get(name) if name else None
        if isinstance(rule, Pseudonymise):
            meta = plan.policy.policy
            env = BuildEnv(previous, epochs, Counter(), cache_size, pack=meta.name, link_domain=meta.link_domain,
                           field=f"topic_{name}")
            out[plan.name] = rule.build(env)
    return out


def _rejecter(reject: Reject):
    return lambda payload, upstream, device, consents: reject


def _leaves(node: Node):
    yield from node.leaves
    for step in node.children:
        yield from _leaves(step.child)


def _granted(plan: Plan, obj: Any, device: str | None, consents: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The purposes the message's device consented to (``device`` from the topic, else the payload)."""
    if consents is NO_CONSENT:  # nothing on record: skip the lookups
        return _EMPTY
    if device is not None:
        return consents.get(device, _EMPTY)
    if plan.device_steps is not None:
        device = _read(obj, plan.device_steps, plan.structs)
        if device.__class__ is msgspec.Raw:
            device = msgspec.json.decode(device)
        if device is not UNSET and device is not None:
            return consents.get(str(device), _EMPTY)
    return _EMPTY


def _sample_unknown(plan: Plan, payload: bytes) -> int:
    """Undeclared fields of one message, counted into the plan's stats (the sampled path)."""
    try:
        unknown = _count_unknown(plan.root, msgspec.json.decode(payload), plan.max_depth)
    except (RecursionError, ValueError):  # ValueError: bad UTF-8 in a field the Struct skipped
        unknown = 0
    plan.stats[("", "unknown_field")] += unknown
    plan.stats[("", "unknown_field_sampled_messages")] += 1
    return unknown


def interpret(plan: Plan, payload: bytes, upstream: str, device: str | None, consents) -> Forward | Reject:
    """The reference interpreter of any plan, over plain dicts: how a ``default = "keep"`` policy
    runs, and what the generated runner of a fail-closed one must agree with (a property test
    compares them). A fail-closed plan's message is first decoded into its declared Struct, so its
    undeclared fields are gone before the rules run, as in the generated code."""
    if len(payload) > plan.max_bytes:
        return Reject("too_large", plan)
    try:
        if plan.structs:
            obj = msgspec.to_builtins(plan.decode(payload))
        else:
            obj = plan.decode(payload)
            if obj.__class__ is not dict:
                return Reject("not_object", plan)
            msgspec.convert(obj, plan.root.struct)  # types and required fields
    except msgspec.ValidationError as exc:
        return _invalid(plan, str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec passes bad UTF-8 in strings through
        return Reject("not_json", plan)
    except RecursionError:
        return Reject("too_deep", plan)
    for cond in plan.conditions:
        if _holds(cond, obj, False):
            plan.stats[(cond.rule.path, cond.rule.reason)] += 1
            return Reject(cond.rule.reason, plan, cond.rule.path)
    granted = _granted(plan, obj, device, consents)
    try:
        _apply_dict(plan.root, obj, granted)
        hit = _guard_dict(plan, plan.root, obj, plan.max_depth - 1, plan.leak_guard)
    except _TooDeep:
        return Reject("too_deep", plan)
    except AffixRefused as exc:
        return _refused(plan, exc.args[0])
    if hit is not None:
        label, kind = hit
        plan.stats[(label, "leak")] += 1
        return Reject("leak", plan, label, kind)
    return _tuple_new(Forward, (upstream, plan.encode(obj), plan, 0))


def _refused(plan: Plan, label: str) -> Reject:
    plan.stats[(label, "bad_shape")] += 1
    return Reject("bad_shape", plan, label)


def _invalid(plan: Plan, message: str) -> Reject:
    m = _AT.search(message)
    path = re.sub(r"\[\d+\]", "[]", m.group(1)) if m else ""
    detail = path if path in plan.paths else ""  # only paths the policy itself names
    null_required = m is not None and "[" not in m.group(1) and message.endswith(f"got `null` - at `$.{m.group(1)}`")
    if message.startswith("Object missing required field") or null_required:
        return Reject("missing_field", plan, detail=detail)
    if message.startswith("Expected `object`") and not path:
        return Reject("not_object", plan)
    return Reject("wrong_type", plan, detail=detail)


def _read(obj: Any, steps: list[Step], structs: bool) -> Any:
    for step in steps:
        if obj is UNSET or obj is None:
            return UNSET
        obj = getattr(obj, step.attr) if structs else obj.get(step.key, UNSET)
    return obj


def _holds(cond, obj: Any, structs: bool) -> bool:
    """A ``drop_when`` condition holds: its test passes and its ``unless`` test (if any) does not."""
    if not cond.test(_read(obj, cond.steps, structs)):
        return False
    return cond.unless_test is None or not cond.unless_test(_read(obj, cond.unless_steps, structs))


# -- shared by the generated Struct code (gateway.policy.codegen) and the dict executor ----


def _kept_scanner(plan: Plan):
    decimals = plan.coordinate_decimals
    return lambda v, enabled, key, depth: _scan(v, enabled, decimals, key, depth)


def _coarsen(loc, lat: Any, lon: Any, granted: frozenset[str]) -> Any:
    """The new (lat, lon); UNSET to leave both alone; a lone coordinate is removed."""
    if (lat is UNSET and lon is UNSET) or (lat is None and lon is None):
        return UNSET
    loc.count += 1
    if lat is None or lon is None or lat is UNSET or lon is UNSET:
        return UNSET, UNSET  # a lone coordinate is still precise
    point = loc.fn(lat, lon, loc.rule.consent in granted)
    return (UNSET, UNSET) if point is None else point


def _scan(v: Any, enabled: frozenset[str], coordinate_decimals: int, key: str, depth: int) -> str | None:
    """The detector an identifier in ``v`` trips, or None. Raises _TooDeep past ``depth``.

    ``coordinate_decimals`` NO_COORDINATES: the guard is off, only the depth is checked."""
    cls = v.__class__
    if cls is str:
        if enabled and v and not v.isalpha():
            hits = find(v, enabled)
            return hits[0][0] if hits else None
    elif cls is int:
        if enabled:
            kind = classify_number(v)
            return kind if kind in enabled else None
    elif cls is float:
        if enabled and not -NUMBER_LIMIT < v < NUMBER_LIMIT:  # an identifier written as a float
            kind = classify_number(v)
            if kind in enabled:
                return kind
        if COORDINATE_KEYS.fullmatch(key) and _decimals(v) > coordinate_decimals:
            return "coordinate"
    elif cls is dict:
        if depth <= 0:
            raise _TooDeep
        for k, x in v.items():
            hit = _scan(k, enabled, coordinate_decimals, "", depth)
            hit = hit or _scan(x, enabled, coordinate_decimals, k, depth - 1)
            if hit:
                return hit
    elif cls is list:
        if depth <= 0:
            raise _TooDeep
        if 2 <= len(v) <= 3 and coordinate_decimals < NO_COORDINATES and _position(v):
            return "coordinate"
        for x in v:
            hit = _scan(x, enabled, coordinate_decimals, key, depth - 1)
            if hit:
                return hit
    return None


NO_COORDINATES = 99


def _position(v: list) -> bool:
    """``[lat, lon]``, ``[lon, lat]`` or ``[lon, lat, alt]`` with a precise coordinate."""
    a, b = v[0], v[1]
    return (
        (a.__class__ is float or b.__class__ is float)
        and a.__class__ in (int, float)
        and b.__class__ in (int, float)
        and precise_pair(a, b)
    )


def _decimals(x: float) -> int:
    text = repr(x)
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return max(0, decimals - int(exponent)) if exponent else decimals


def _count_unknown(node: Node, value: Any, depth: int) -> int:
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
                n += _count_unknown(step.child, element, depth - 1)
    return n


# -- the same steps over dicts (policies with default = "keep") -------------------------


def _apply_dict(node: Node, d: dict, granted: frozenset[str]) -> None:
    for step in node.drops:
        if d.pop(step.key, UNSET) is not UNSET:
            step.count += 1
    for step in node.leaves:
        v = d.get(step.key)
        if v is None:
            continue
        step.count += 1
        if step.array:
            fn = step.fn
            out = [x for x in (None if e is None else fn(e) for e in v) if x is not UNSET]
        else:
            out = step.fn(v)
        if out is UNSET:
            del d[step.key]
        else:
            d[step.key] = out
    for loc in node.locations:
        point = _coarsen(loc, d.get(loc.lat.key, UNSET), d.get(loc.lon.key, UNSET), granted)
        if point is not UNSET:
            for step, value in ((loc.lat, point[0]), (loc.lon, point[1])):
                if value is UNSET:
                    d.pop(step.key, None)
                else:
                    d[step.key] = value
    for step in node.children:
        v = d.get(step.key)
        if v is None:
            continue
        for element in v if step.array else (v,):
            if element is not None:
                _apply_dict(step.child, element, granted)


def _guard_dict(plan: Plan, node: Node, d: dict, depth: int, guard: bool) -> tuple[str, str] | None:
    """Scan everything kept: declared ``keep`` fields and every undeclared one."""
    for key, v in d.items():
        step = node.steps.get(key)
        if step is None or (step.rule is not None and step.rule.op_name() == "keep"):
            enabled = (step.enabled if step else ALL) if guard else _EMPTY
            decimals = plan.coordinate_decimals if guard else NO_COORDINATES
            kind = (_scan(key, enabled, 0, "", depth) if step is None else None) or _scan(
                v, enabled, decimals, key, depth
            )
            if kind is not None:
                return (step.label if step else "(default keep)"), kind
        elif step.child is not None and v is not None:
            for element in v if step.array else (v,):
                if element is not None:
                    hit = _guard_dict(plan, step.child, element, depth - 1, guard)
                    if hit is not None:
                        return hit
    return None


_HELPERS = {
    "Forward": Forward, "Reject": Reject, "TooDeep": _TooDeep, "invalid": _invalid,
    "sample_unknown": _sample_unknown, "granted_of": _granted, "holds": _holds, "read": _read, "refused": _refused,
    "NO_CONSENT": NO_CONSENT, "EMPTY": _EMPTY, "AffixRefused": AffixRefused,
    "ValidationError": msgspec.ValidationError, "DecodeError": msgspec.DecodeError,
}  # fmt: skip
