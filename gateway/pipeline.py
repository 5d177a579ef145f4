"""The hot path: ``(topic, payload bytes) -> Forward | Reject``, pure and in memory.

Per message: route the topic (cached), check the size, one msgspec decode
(straight into the policy's Struct types), the message-level drops, the
compiled field steps, the leak guard over what is kept, one encode. No I/O, and
no raw value in any rejection: a ``Reject`` carries a reason code, the rule's
label and at most a path or detector name taken from the policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import msgspec
from msgspec import UNSET

from gateway.keys import Keyring
from gateway.ops.base import BoundedCache, BuildEnv, Epochs
from gateway.ops.basic import Keep
from gateway.ops.detect import ALL, NUMBER_LIMIT, classify_number, coordinate_value, find, keyed_position, position
from gateway.ops.identity import AffixRefused, Pseudonymise
from gateway.policy import codegen
from gateway.policy.compile import COORDINATE_KEYS, Node, Plan, compile_policy
from gateway.policy.load import Source
from gateway.policy.model import BUILT_IN_REASONS
from gateway.policy.runtime import (
    EMPTY,
    NO_CONSENT,
    Forward,
    Reject,
    TooDeep,
    coarsen,
    granted_of,
    holds,
    invalid,
    refused,
)
from gateway.policy.topics import safe_level

REASONS = BUILT_IN_REASONS  # besides the ``reason`` of each policy's own drop_when rules
_tuple_new = tuple.__new__


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
        # What the Engine compiles from each (immutable) plan: ``run(payload, upstream, device,
        # consents) -> Forward | Reject``, generated for a fail-closed plan, else the interpreter.
        self._runs: dict[Plan, Callable[..., Forward | Reject]] = {
            plan: codegen.build_runner(plan, unknown_sample, _kept_scanner(plan))
            if plan.structs
            else partial(interpret, plan)
            for plan in self.plans
        }
        # Fused pseudonymisers read their cache directly: re-key them as soon as an epoch rolls over.
        self._refresh = [
            step.compiled.refresh
            for plan in self.plans
            for step in _leaves(plan.root)
            if step.compiled is not None and step.compiled.refresh is not None
        ]
        self._routes: BoundedCache[str, tuple[Any, str | None, str | None]] = BoundedCache(cache_size)
        self._generation = self.epochs.generation
        self._previous = _previous_devices(self.plans, keyring, self.epochs, cache_size)
        self._previous_by_topic: BoundedCache[str, Any] = BoundedCache(cache_size)

    def runner(self, plan: Plan) -> Callable[..., Forward | Reject]:
        """The compiled ``run`` of one of ``self.plans`` (``codegen.sources(run)`` shows its code)."""
        return self._runs[plan]

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
                    return plan, refused(plan, f"route.capture.{name}"), device
                if level is None:
                    return plan, None, device
                values[name] = level
                rule = plan.policy.route.capture[name]
                if isinstance(rule, Keep) and plan.leak_guard:  # a topic level is forwarded like a kept field
                    hits = find(level, ALL - set(rule.guard_allow))
                    if hits:
                        return plan, Reject("leak", plan, f"route.capture.{name}", hits[0][0]), device
        return plan, plan.template.render(values), device

    def _entry(self, topic: str) -> tuple[Any, str | None, str | None]:
        """The route cache's entry for ``topic``: ``(run, upstream, device)``; ``run`` rejects
        every message at once when the topic has no route or no valid upstream topic."""
        plan, upstream, device = self._resolve(topic)
        if plan is None:
            return _rejecter(Reject("no_route")), None, None
        if not isinstance(upstream, str):
            return _rejecter(upstream if upstream is not None else Reject("bad_topic", plan)), None, None
        return self._runs[plan], upstream, device

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
            env = BuildEnv(
                previous,
                epochs,
                Counter(),
                cache_size,
                pack=meta.name,
                link_domain=meta.link_domain,
                field=f"topic_{name}",
            )
            out[plan.name] = rule.build(env).call
    return out


def _rejecter(reject: Reject):
    return lambda payload, upstream, device, consents: reject


def _leaves(node: Node):
    yield from node.leaves
    for step in node.children:
        if step.child is not None:
            yield from _leaves(step.child)


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
        return invalid(plan, str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec passes bad UTF-8 in strings through
        return Reject("not_json", plan)
    except RecursionError:
        return Reject("too_deep", plan)
    for cond in plan.conditions:
        if holds(cond, obj, False):
            plan.stats[(cond.rule.path, cond.rule.reason)] += 1
            return Reject(cond.rule.reason, plan, cond.rule.path)
    granted = granted_of(plan, obj, device, consents)
    try:
        _apply_dict(plan.root, obj, granted)
        hit = _guard_dict(plan, plan.root, obj, plan.max_depth - 1, plan.leak_guard)
    except TooDeep:
        return Reject("too_deep", plan)
    except AffixRefused as exc:
        return refused(plan, exc.args[0])
    if hit is not None:
        label, kind = hit
        plan.stats[(label, "leak")] += 1
        return Reject("leak", plan, label, kind)
    return _tuple_new(Forward, (upstream, plan.encode(obj), plan, 0))


# -- shared by the generated Struct code (gateway.policy.codegen) and the dict executor ----


CLEAN_CACHE = 4096  # per plan: recent (string, detectors) pairs inside kept objects found clean
CLEAN_MAX_LEN = 64  # only short strings are remembered


def _kept_scanner(plan: Plan):
    decimals = plan.coordinate_decimals
    clean: BoundedCache[tuple[Any, ...], bool] = BoundedCache(CLEAN_CACHE)

    def scan(v: Any, enabled: frozenset[str], key: str, depth: int) -> str | None:
        if v.__class__ is list and depth > 0:  # _scan's first look at a list, without its other tests
            try:
                if (tuple(v), enabled, key) in clean:
                    return None
            except TypeError:  # an object or a list inside: not remembered
                pass
        return _scan(v, enabled, decimals, key, depth, clean)

    return scan


def _scan(
    v: Any, enabled: frozenset[str], coordinate_decimals: int, key: str, depth: int, clean: Any = None
) -> str | None:
    """The detector an identifier in ``v`` trips, or None. Raises TooDeep past ``depth``.

    ``coordinate_decimals`` NO_COORDINATES: the guard is off, only the depth is checked.
    ``clean``: a BoundedCache of short strings, and short lists of strings, found clean
    before (labels, product names inside objects repeat from message to message), or None."""
    cls = v.__class__
    if cls is str:
        if enabled and v and not v.isalpha():
            if clean is None or len(v) > CLEAN_MAX_LEN:
                hits = find(v, enabled)
                if hits:
                    return hits[0][0]
            elif (v, enabled) not in clean:
                hits = find(v, enabled)
                if hits:
                    return hits[0][0]
                clean.put((v, enabled), True)
        if key and coordinate_decimals < NO_COORDINATES and COORDINATE_KEYS.fullmatch(key):
            number = coordinate_value(v)  # {"lat": "12.971598"}
            if number is not None and number[1] > coordinate_decimals:
                return "coordinate"
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
            raise TooDeep
        if coordinate_decimals < NO_COORDINATES and keyed_position(v):  # {"x": 77.594562, "y": 12.971598}
            return "coordinate"
        for k, x in v.items():
            hit = _scan(k, enabled, coordinate_decimals, "", depth, clean)
            hit = hit or _scan(x, enabled, coordinate_decimals, k, depth - 1, clean)
            if hit:
                return hit
    elif cls is list:
        if depth <= 0:
            raise TooDeep
        if clean is not None and 0 < len(v) <= CLEAN_LIST:
            try:
                size = len("".join(v))  # a list of strings only (a product list, tags)
            except TypeError:
                size = CLEAN_LIST_CHARS + 1
            if size <= CLEAN_LIST_CHARS:  # remembered whole when clean: such lists repeat
                memo = (tuple(v), enabled, key)
                if memo in clean:
                    return None
                hit = _scan_list(v, enabled, coordinate_decimals, key, depth, clean)
                if hit is None:
                    clean.put(memo, True)
                return hit
        return _scan_list(v, enabled, coordinate_decimals, key, depth, clean)
    return None


CLEAN_LIST = 16  # lists of up to this many strings ...
CLEAN_LIST_CHARS = 256  # ... and characters are remembered whole when found clean


def _scan_list(
    v: list, enabled: frozenset[str], coordinate_decimals: int, key: str, depth: int, clean: Any
) -> str | None:
    if 2 <= len(v) <= 3 and coordinate_decimals < NO_COORDINATES and _position(v):
        return "coordinate"
    for x in v:
        hit = _scan(x, enabled, coordinate_decimals, key, depth - 1, clean)
        if hit:
            return hit
    return None


NO_COORDINATES = 99


def _position(v: list) -> bool:
    """``[lat, lon]``, ``[lon, lat]`` or ``[lon, lat, alt]`` with a precise coordinate, as numbers
    or numeric strings (``["12.971598", "77.594562"]``)."""
    return position(v[0], v[1])


def _decimals(x: float) -> int:
    text = repr(x)
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return max(0, decimals - int(exponent)) if exponent else decimals


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
        fn: Any = step.fn  # a leaf has its operation
        out = [x for x in (None if e is None else fn(e) for e in v) if x is not UNSET] if step.array else fn(v)
        if out is UNSET:
            del d[step.key]
        else:
            d[step.key] = out
    for loc in node.locations:
        point = coarsen(loc, d.get(loc.lat.key, UNSET), d.get(loc.lon.key, UNSET), granted)
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
            if element is not None and step.child is not None:
                _apply_dict(step.child, element, granted)


def _guard_dict(plan: Plan, node: Node, d: dict, depth: int, guard: bool) -> tuple[str, str] | None:
    """Scan everything kept: declared ``keep`` fields and every undeclared one."""
    for key, v in d.items():
        step = node.steps.get(key)
        if step is None or (step.rule is not None and step.rule.op_name() == "keep"):
            enabled = (step.enabled if step else ALL) if guard else EMPTY
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
