"""Compile a policy into a plan: msgspec types plus flat step lists per object.

Everything that can be decided once is decided here, so the hot path only
walks lists: which attributes to drop, which callables to apply, which kept
values the leak guard must look at. For a fail-closed policy the payload is
decoded straight into Struct types generated from the declared paths, so an
undeclared field is never even materialised and a wrong type is a precise
``ValidationError``; a ``default = "keep"`` policy works on plain dicts instead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from msgspec import NODEFAULT, UNSET, UnsetType

from gateway.keys import Keyring
from gateway.ops import Drop, Generalise, Keep, Mask, Replace
from gateway.ops.base import BuildEnv, Compiled, Epochs, Rule, Transform
from gateway.ops.detect import ALL, classify_number, find
from gateway.ops.location import CoarsenLocation
from gateway.policy.load import PolicyError, Source, locate
from gateway.policy.model import DropWhen, FieldRuleT, Match, Policy, fold
from gateway.policy.stats import PlanStats
from gateway.policy.topics import Template, TopicFilter, safe_level

_SEGMENT = re.compile(r"([^.\[\]]+)(\[\])?")
COORDINATE_KEYS = re.compile(r"(?i)(?:.*[_-])?(?:lat|latitude|lon|lng|long|longitude)")  # gps_lat, home-lon ...


@dataclass(eq=False, slots=True)
class Step:
    """One declared key of an object and what to do with it."""

    key: str
    attr: str = ""
    rule: Rule | None = None  # None: only read (drop_when, device) then dropped
    compiled: Compiled | None = None  # what the rule built: its call, inline form and refresh
    fn: Transform | None = None  # compiled.call, held for the interpreter
    array: bool = False  # the value is an array; ``fn`` / ``child`` apply per element
    child: Node | None = None
    count: int = 0  # how often the rule acted (a metric)
    read: bool = False  # read by drop_when or as the device id, so it must be decoded
    enabled: frozenset[str] = frozenset()  # keep: the leak-guard detectors that apply

    @property
    def op(self) -> str:
        return self.rule.op_name() if self.rule is not None else "drop"

    @property
    def label(self) -> str:
        return self.rule.label() if self.rule is not None else self.key


@dataclass(eq=False, slots=True)
class Location:
    lat: Step
    lon: Step
    rule: CoarsenLocation
    compiled: Compiled  # call(lat, lon, consented) -> (lat, lon) | None, and its inline form
    fn: Any  # compiled.call
    count: int = 0


@dataclass(eq=False, slots=True)
class Node:
    """The steps for one JSON object (the root, or a nested object / array element)."""

    steps: dict[str, Step] = field(default_factory=dict)
    drops: list[Step] = field(default_factory=list)
    leaves: list[Step] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)
    children: list[Step] = field(default_factory=list)
    kept: list[Step] = field(default_factory=list)  # values the leak guard scans
    struct: type | None = None  # the declared fields; msgspec skips everything else in C


@dataclass(eq=False)
class Condition:
    steps: list[Step]  # the path, root first
    rule: DropWhen
    test: Any = None  # value -> bool, from rule (see matcher)
    unless_steps: list[Step] | None = None
    unless_test: Any = None


def matcher(m: Match) -> Callable[[Any], bool]:
    """``value -> bool`` for one ``drop_when`` test; text compared folded (see model.fold)."""
    if m.present is not None:
        want = m.present

        def present(v: Any) -> bool:
            if v.__class__ is msgspec.Raw:
                v = msgspec.json.decode(v)
            return (v is not UNSET and v is not None) == want

        return present
    values = [m.equals] if m.equals is not None else list(m.one_of or ())
    texts = frozenset(fold(v) for v in values if isinstance(v, str))
    others = [(v, type(v)) for v in values if not isinstance(v, str)]

    def equal(v: Any) -> bool:
        if v is UNSET or v is None:
            return False
        if v.__class__ is msgspec.Raw:
            v = msgspec.json.decode(v)
        if isinstance(v, str):
            return fold(v) in texts
        return any(v == o and type(v) is t for o, t in others)  # 1 is not true, nor 1.0

    return equal


@dataclass(eq=False, frozen=True)
class Plan:
    """Everything the hot path needs for one policy: built once by ``compile_policy``, never
    changed after. The Engine holds what it compiles from a plan (its runner, gateway.pipeline)."""

    source: Source
    filters: list[TopicFilter]
    template: Template
    captures: dict[str, Transform]
    root: Node
    conditions: list[Condition]
    device_capture: str | None
    device_steps: list[Step] | None
    key_id: str
    coordinate_decimals: int
    stats: PlanStats  # every count of this plan; telemetry reads stats.snapshot()
    paths: frozenset[str]  # every declared path, for safe error details
    structs: bool  # fail-closed policy decoded into Structs
    max_bytes: int = 0
    max_depth: int = 0
    leak_guard: bool = True
    decode: Any = None
    encode: Any = None

    def __repr__(self) -> str:
        return f"Plan({self.name!r})"

    @property
    def policy(self) -> Policy:
        return self.source.policy

    @property
    def name(self) -> str:
        return self.policy.policy.name

    def action_counts(self) -> Counter[str]:
        """How often each operation acted so far (``coarsen_location`` counts points)."""
        return self.stats.actions()


def parse_path(path: str) -> list[tuple[str, bool]]:
    """``cells[].cell_id`` -> ``[("cells", True), ("cell_id", False)]``."""
    parts = path.split(".")
    out = []
    for part in parts:
        m = _SEGMENT.fullmatch(part)
        if not m:
            raise ValueError(f"invalid path {path!r}: use dotted keys, with [] after an array")
        out.append((m.group(1), m.group(2) is not None))
    return out


def compile_policy(source: Source, keyring: Keyring, epochs: Epochs, cache_size: int = 65536) -> Plan:
    """Build the plan, or raise ``PolicyError`` naming the rule at fault."""
    policy, file, text = source.policy, source.file, source.text

    def fail(message: str, where: str) -> PolicyError:
        return PolicyError(file, message, locate(text, where) if text else None, where)

    meta = policy.policy
    stats = PlanStats()  # the operations count their events in it as they run
    env = BuildEnv(keyring, epochs, stats, cache_size, pack=meta.name, link_domain=meta.link_domain)
    root = Node()
    paths: set[str] = set()

    def place(path: str, where: str) -> tuple[Node, Step]:
        try:
            segments = parse_path(path)
        except ValueError as exc:
            raise fail(str(exc), where) from None
        node = root
        for i, (key, array) in enumerate(segments):
            step = node.steps.get(key)
            last = i == len(segments) - 1
            if step is None:
                step = node.steps[key] = Step(key, array=array)
            elif step.array != array:
                raise fail(f"{key!r} is used both as an array and not", where)
            if last:
                return node, step
            if step.rule is not None:
                raise fail(f"{path!r} is inside {key!r}, which has its own rule", where)
            step.child = step.child or Node()
            node = step.child
        raise AssertionError

    for i, rule in enumerate(policy.field):
        where = f"field[{i}]"
        if isinstance(rule, CoarsenLocation):
            lat_parent, lon_parent = rule.lat.rpartition(".")[0], rule.lon.rpartition(".")[0]
            if lat_parent != lon_parent or "[]" in rule.lat.rpartition(".")[2] + rule.lon.rpartition(".")[2]:
                raise fail("lat and lon must be sibling fields of one object", where)
            node, lat = place(rule.lat, where)
            _, lon = place(rule.lon, where)
            for step, path in ((lat, rule.lat), (lon, rule.lon)):
                if step.rule is not None or step.child is not None:
                    raise fail(f"{path!r} already has a rule", where)
                step.rule = rule
                paths.add(path)
            built = rule.build(env)
            node.locations.append(Location(lat, lon, rule, built, built.call))
            continue
        if not rule.path:
            raise fail(f"{rule.op_name()} needs a path", where)
        node, step = place(rule.path, where)
        if step.rule is not None or step.child is not None:
            raise fail(f"{rule.path!r} already has a rule", where)
        step.rule = rule
        paths.add(rule.path)
        if isinstance(rule, Drop):
            pass  # sorted into node.drops by _finish, once it is known whether it is read
        elif isinstance(rule, Keep):
            step.enabled = ALL - set(rule.guard_allow)
            if rule.type != "boolean":  # a flag cannot carry an identifier
                node.kept.append(step)
        else:
            step.compiled = rule.build(replace(env, field=rule.path))
            step.fn = step.compiled.call
            node.leaves.append(step)

    def chain(path: str, where: str) -> list[Step]:
        """The steps from the root to ``path``, creating read-only ones as needed."""
        place(path, where)
        node, out = root, []
        for key, _ in parse_path(path):
            out.append(node.steps[key])
            node.steps[key].read = True
            node = node.steps[key].child  # type: ignore[assignment]  # a path's inner keys have children
        paths.add(path)
        return out

    conditions = []
    for i, c in enumerate(policy.drop_when):
        cond = Condition(chain(c.path, f"drop_when[{i}]"), c, matcher(c))
        if c.unless is not None:
            cond.unless_steps, cond.unless_test = chain(c.unless.path, f"drop_when[{i}].unless"), matcher(c.unless)
        conditions.append(cond)

    meta = policy.policy
    device_capture = device_steps = None
    try:
        filters = [TopicFilter(t) for t in policy.route.topics]
        template = Template(policy.route.upstream)
    except ValueError as exc:
        raise fail(str(exc), "route.topics") from None
    if not filters:
        raise fail("a policy needs at least one topic filter", "route.topics")
    captured = [{name for _, name in f.names} for f in filters]
    for name in template.names:
        if name not in policy.route.capture:
            raise fail(f"upstream uses {{{name}}}: declare how to transform it in [route.capture.{name}]", "route")
        if any(name not in c for c in captured):
            raise fail(f"upstream uses {{{name}}}, which not every topic filter captures", "route")
    for name, rule in policy.route.capture.items():
        if getattr(rule, "path", ""):
            raise fail("a capture rule has no path (it applies to the topic level)", f"route.capture.{name}")
    captures = {
        name: rule.build(replace(env, field=f"topic_{name}")).call for name, rule in policy.route.capture.items()
    }
    if meta.device:
        m = re.fullmatch(r"\{([a-z_][a-z0-9_]*)\}", meta.device)
        if m:
            device_capture = m.group(1)
            if any(device_capture not in c for c in captured):
                raise fail(f"device {meta.device} is not captured by every topic filter", "policy.device")
        elif "[]" in meta.device:
            raise fail("the device path cannot go through an array", "policy.device")
        else:
            device_steps = chain(meta.device, "policy.device")

    for name, rule in _constants(policy):
        hit = _first_leak(rule)
        if hit:
            raise fail(
                f"this rule writes a constant that looks like a {hit}: the leak guard would block every message", name
            )

    for name, rule in policy.route.capture.items():
        constants: list[Any] = []
        if isinstance(rule, Replace):
            constants = [rule.value]
        elif isinstance(rule, Generalise):
            constants = [*rule.map.values(), rule.default]
        elif isinstance(rule, Mask):
            constants = [rule.char]
        if any(safe_level(c) is None for c in constants):
            raise fail(
                "this capture rule writes a value that is not a topic level (empty, '/', '+' or '#')",
                f"route.capture.{name}",
            )
    locations = [r for r in policy.field if isinstance(r, CoarsenLocation)]
    if any(r.consent for r in locations) and not meta.device:
        raise fail("a consent-dependent rule needs [policy] device, to know whose consent counts", "policy.device")
    coordinate_decimals = meta.coordinate_decimals
    if coordinate_decimals is None:
        coordinate_decimals = min((r.max_decimals for r in locations), default=3)

    structs = meta.default == "drop"
    _finish(root, structs, "Root")
    stats.bind(root, (c.rule.reason for c in conditions))
    plan = Plan(
        source=source,
        filters=filters,
        template=template,
        captures=captures,
        root=root,
        conditions=conditions,
        device_capture=device_capture,
        device_steps=device_steps,
        key_id=keyring.active,
        coordinate_decimals=coordinate_decimals,
        stats=stats,
        paths=frozenset(paths),
        structs=structs,
        max_bytes=meta.max_bytes,
        max_depth=meta.max_depth,
        leak_guard=meta.leak_guard,
        decode=msgspec.json.Decoder(root.struct if structs else Any).decode,
        encode=(msgspec.msgpack.Encoder() if meta.output == "msgpack" else msgspec.json.Encoder()).encode,
    )
    return plan


def _constants(policy: Policy) -> Iterator[tuple[str, FieldRuleT]]:
    for i, rule in enumerate(policy.field):
        yield f"field[{i}]", rule
    for name, rule in policy.route.capture.items():
        yield f"route.capture.{name}", rule


def _first_leak(rule: Rule) -> str | None:
    """Constants a rule emits (replace, generalise) must not themselves look like identifiers."""
    values: list[Any] = []
    if isinstance(rule, Replace):
        values = [rule.value]
    elif isinstance(rule, Generalise):
        values = [*rule.map.values(), rule.default]
    for v in values:
        if isinstance(v, str):
            hits = find(v, ALL)
            if hits:
                return hits[0][0]
        elif isinstance(v, int) and not isinstance(v, bool) and classify_number(v):
            return classify_number(v)
    return None


def _finish(node: Node, structs: bool, name: str) -> None:
    """Sort the steps into the lists the executor walks and generate the Struct type.

    A plain ``drop`` that nothing reads is left out of the Struct: msgspec then
    skips it while decoding, like any undeclared field. A dropped field that a
    condition or the device lookup reads is decoded, then removed.
    """
    fields: list[tuple[str, Any, Any]] = []
    inner: Any
    for i, step in enumerate(node.steps.values()):
        step.attr = f"f{i}"
        plain_drop = isinstance(step.rule, Drop) or (step.rule is None and step.child is None)
        if plain_drop and not step.read and structs and not (step.rule is not None and step.rule.required):
            continue
        if plain_drop:
            node.drops.append(step)
        if step.child is not None:
            _finish(step.child, structs, f"{name}_{i}")
            node.children.append(step)
            inner = step.child.struct
        elif step.rule is None:
            inner = Any
        elif isinstance(step.rule, CoarsenLocation):
            inner = float
        else:
            inner = step.rule.accepts
        if inner is msgspec.Raw and not structs:
            inner = Any  # dict mode validates with msgspec.convert, which has no Raw
        if step.array:
            inner = list[inner]
        if step.rule is not None and step.rule.required:
            fields.append((step.attr, inner, NODEFAULT))
        elif inner is msgspec.Raw:  # Raw takes any JSON value, null included
            fields.append((step.attr, msgspec.Raw | UnsetType, UNSET))
        else:
            fields.append((step.attr, inner | None | UnsetType, UNSET))
    # gc=False: a decoded message is a tree (JSON has no cycles, and the operations only put
    # new scalars in), so the collector need not track the millions of short-lived instances.
    node.struct = msgspec.defstruct(
        name, fields, kw_only=True, rename={s.attr: s.key for s in node.steps.values() if s.attr}, gc=False
    )
