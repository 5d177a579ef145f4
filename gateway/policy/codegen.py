"""Generate the hot-path code of a fail-closed plan.

For a plan, one function is generated as straight-line Python, the way
``dataclasses`` generates ``__init__``: ``run(payload, upstream, device,
consents)`` checks the size, decodes, samples the unknown-field count, applies
the message-level drops, runs the field operations and the leak guard over the
kept values of the root object, and encodes. Each nested object gets its own
``apply(obj, granted)`` and ``guard(obj, depth)``. Direct attribute access
(``obj.f3``), no loop over step objects, and the operations pasted in as
statements (their ``Compiled.inline`` form, see gateway.ops.base) where they offer one make
a field cost a few bytecodes instead of a call and a loop turn with several
lookups, which matters when the whole budget per message is a few microseconds.
The generated source is kept on each function (``__source__``) for debugging.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from gateway.ops.base import BoundedCache
from gateway.ops.detect import ISO_SHAPES, NUMBER_LIMIT, ZERO_DIGITS, classify_number, find
from gateway.policy.compile import COORDINATE_KEYS, Condition, Node, Plan, Step
from gateway.policy.runtime import RUNTIME, coarsen

VERDICT_CACHE = 1024  # per kept string field: recent values the guard found clean
VERDICT_MAX_LEN = 64  # only short values are remembered

# ``v`` is an ISO 8601 timestamp (gateway.ops.detect.iso_time, inline; a shape is at most 35
# ASCII characters, so no length test is needed): find() would return nothing.
# (A str from msgspec has no lone surrogate, so encode() cannot fail.)
Fn = Callable[..., Any]  # a generated function or a runtime helper
_ISO = "v.encode().translate(ZERO) in SHAPES"


def build(node: Node, guard: bool, scan: Fn, coarsen: Fn) -> tuple[Fn, Fn]:
    """``(apply, guard)`` for ``node`` and, recursively, its children."""
    ns = _namespace(scan, coarsen)
    apply_lines = ["def apply(obj, granted):", *_indent(_apply(node, ns, guard, scan, coarsen), 1), "    return None"]
    guard_lines = [
        "def guard(obj, depth):",
        *_indent(_guard(node, ns, guard, scan, coarsen, lambda label, kind: f"return {label}, {kind}"), 1),
        "    return None",
    ]
    return _define(apply_lines, ns, "apply"), _define(guard_lines, ns, "guard")


def build_runner(plan: Plan, sample: int, scan: Fn) -> Fn:
    """``run(payload, upstream, device, consents) -> Forward | Reject`` for a fail-closed plan.

    The generated code calls the helpers of gateway.policy.runtime (``RUNTIME``) and ``scan``,
    the plan's leak-guard scanner. Hands ``plan.stats`` the ``tallies()`` of the counts the
    generated code keeps in local cells.

    With the leak guard on, kept root ``integer`` fields are decoded by a second
    Struct type that only admits values the guard would pass without a look
    (|v| < 10**11, see NUMBER_LIMIT), so ``run`` has no check for them; a message
    this stricter decode refuses for any reason goes to ``run_full``, which decodes
    it again with the plan's own type and checks every kept value.
    """
    _BUILDING.append(plan.name)
    _SOURCES.append([])
    try:
        run = _build_runner(plan, sample, scan, coarsen)
        run.__sources__ = _SOURCES[-1]  # type: ignore[attr-defined]
        return run
    finally:
        _BUILDING.pop()
        _SOURCES.pop()


def _build_runner(plan: Plan, sample: int, scan: Fn, coarsen: Fn) -> Fn:
    ns = _namespace(scan, coarsen)
    ns.update(RUNTIME)
    ns.update(plan=plan, stats=plan.stats, decode=plan.decode, encode=plan.encode, conditions=plan.conditions)
    root = plan.root
    counters: list[tuple[str, str]] = []  # (cell name, operation name)
    apply_lines = _apply(root, ns, plan.leak_guard, scan, coarsen, counters)
    bounded = [s for s in root.kept if plan.leak_guard and not s.array and getattr(s.rule, "type", "") == "integer"]
    fast_struct = bounded_struct(root, bounded) if bounded else None

    def body(decoder: str, skip: list[Step], on_invalid: list[str]) -> list[str]:
        lines = [
            f"if len(payload) > {plan.max_bytes}:",
            "    return Reject('too_large', plan)",
            "try:",
            f"    obj = {decoder}(payload)",
            "except ValidationError as exc:",
            *_indent(on_invalid, 1),
            "except (DecodeError, UnicodeDecodeError):",  # msgspec passes bad UTF-8 in strings through
            "    return Reject('not_json', plan)",
            "except RecursionError:",
            "    return Reject('too_deep', plan)",
            "countdown -= 1",  # undeclared fields are counted in 1 message of ``sample``
            "if countdown:",
            "    unknown = 0",
            "else:",
            f"    countdown = {sample}",
            "    unknown = sample_unknown(plan, payload)",
        ]
        lines += _drop_when(plan.conditions, ns)
        if _uses_consent(root):
            lines += ["granted = EMPTY if consents is NO_CONSENT else granted_of(plan, obj, device, consents)"]
        else:
            lines += ["granted = EMPTY"]  # no rule of this plan depends on consent
        guard = _guard(
            root, ns, plan.leak_guard, scan, coarsen, lambda label, kind: f"return leak({label}, {kind})", skip
        )
        return [
            *lines,
            "try:",
            "    pass",  # for a policy with nothing to apply or guard
            *_indent(apply_lines, 1),
            *([f"    depth = {plan.max_depth - 1}"] if any("depth" in line for line in guard) else []),
            *_indent(guard, 1),
            "except TooDeep:",
            "    return Reject('too_deep', plan)",
            "except AffixRefused as exc:",
            "    return refused(plan, exc.args[0])",
            "return tuple_new(Forward, (upstream, encode(obj), plan, unknown))",  # C-level NamedTuple build
        ]

    cells = [name for name, _ in counters]
    declare = [f"        nonlocal {', '.join(['countdown', *cells])}"]
    lines = [
        "def make():",
        f"    countdown = {sample}",
        *(f"    {name} = 0" for name in cells),
        "    def leak(label, kind):",
        "        stats[(label, 'leak')] += 1",
        "        return Reject('leak', plan, label, kind)",
        "    def tallies():",
        f"        return [{', '.join(f'({op!r}, {name})' for name, op in counters)}]",
        "    def run_full(payload, upstream, device, consents):",
        *declare,
        *_indent(body("decode", [], ["return invalid(plan, str(exc))"]), 2),
    ]
    if fast_struct is not None:
        ns["decode_bounded"] = msgspec.json.Decoder(fast_struct).decode
        lines += [
            "    def run(payload, upstream, device, consents):",
            *declare,
            *_indent(body("decode_bounded", bounded, ["return run_full(payload, upstream, device, consents)"]), 2),
        ]
    else:
        lines += ["    run = run_full"]
    lines += ["    return run, tallies"]
    make = _define(lines, ns, "make")
    run, tallies = make()
    plan.stats.track(tallies)
    run.__source__ = make.__source__  # type: ignore[attr-defined]
    return run  # type: ignore[no-any-return]


def bounded_struct(node: Node, steps: list[Step]) -> type:
    """``node.struct`` with the int fields ``steps`` limited to what cannot be an identifier."""
    small = Annotated[int, msgspec.Meta(gt=-NUMBER_LIMIT, lt=NUMBER_LIMIT)]
    attrs = {s.attr for s in steps}
    fields = []
    assert node.struct is not None  # a fail-closed plan declares every node's fields
    for f in msgspec.structs.fields(node.struct):
        kind = f.type
        if f.name in attrs:
            assert kind == int | None | UnsetType or kind is int, kind  # what _finish declares for a kept integer
            kind = small | None | UnsetType if kind is not int else small
        fields.append((f.name, kind, f.default if f.required is False else msgspec.NODEFAULT))
    rename = {f.name: f.encode_name for f in msgspec.structs.fields(node.struct)}
    return msgspec.defstruct(node.struct.__name__ + "Bounded", fields, kw_only=True, rename=rename, gc=False)


def _drop_when(conditions: Sequence[Condition], ns: dict[str, Any]) -> list[str]:
    """Statements that reject the message ``obj`` (a Struct) when a ``drop_when`` condition holds.

    The same decision as runtime.holds, with the paths read inline instead of interpreted
    per message; the tests stay the matcher's own functions. Consecutive conditions under one
    nested object read it once and are skipped together when it is absent or null (where
    each of them reads UNSET and, unless it tests for absence, does not hold): the order in
    which conditions are tried, and so the reason of a rejection, is the policy's."""
    for i, cond in enumerate(conditions):
        rule = cond.rule
        ns[f"dt{i}"], ns[f"dk{i}"] = cond.test, (rule.path, rule.reason)
        ns[f"dr{i}"], ns[f"dp{i}"] = rule.reason, rule.path
        if rule.unless is not None:
            ns[f"du{i}"] = cond.unless_test
    return _drop_group(list(enumerate(conditions)), "obj", 0)


def _drop_group(conditions: list[tuple[int, Condition]], base: str, level: int) -> list[str]:
    """``_drop_when`` for conditions whose paths share their first ``level`` steps, read into ``base``."""
    lines: list[str] = []
    k = 0
    while k < len(conditions):
        i, cond = conditions[k]
        step = cond.steps[level]
        if len(cond.steps) > level + 1 and cond.rule.present is not False:
            run = [conditions[k]]  # the following conditions under the same nested object
            while k + len(run) < len(conditions):
                _, nxt = conditions[k + len(run)]
                if len(nxt.steps) > level + 1 and nxt.rule.present is not False and nxt.steps[level] is step:
                    run.append(conditions[k + len(run)])
                else:
                    break
            if len(run) > 1:
                lines += [f"o{level} = {base}.{step.attr}", f"if o{level}:  # a nested Struct, or absent or null"]
                lines += _indent(_drop_group(run, f"o{level}", level + 1), 1)
                k += len(run)
                continue
        rule = cond.rule
        lines += [f"# drop_when[{i}]: {' '.join(rule.path.split())[:60]} ({' '.join(rule.reason.split())[:40]})"]
        lines += [f"v = {base}.{step.attr}", *(f"v = v.{s.attr} if v else UNSET" for s in cond.steps[level + 1 :])]
        reject = [f"stats[dk{i}] += 1", f"return Reject(dr{i}, plan, dp{i})"]
        if rule.unless is not None:
            unless = _test(rule.unless, f"du{i}")
            reject = [*_read_path(cond.unless_steps or []), f"if not ({unless}):", *_indent(reject, 1)]
        lines += [f"if {_test(rule, f'dt{i}')}:", *_indent(reject, 1)]
        k += 1
    return lines


def _read_path(steps: Sequence[Step]) -> list[str]:
    """``v = `` the value at ``steps`` of ``obj``, UNSET past a missing or null object (runtime.read)."""
    lines = [f"v = obj.{steps[0].attr}"]
    return lines + [f"v = v.{step.attr} if v else UNSET" for step in steps[1:]]  # v: a nested Struct, UNSET or None


def _test(match: Any, fn: str) -> str:
    """The condition for ``fn(v)`` (model.Match's matcher), without a call where the answer is plain."""
    if match.present is True:  # a Raw is decoded by the matcher: ``null`` is not present
        return f"v is not UNSET and v is not None and (v.__class__ is not Raw or {fn}(v))"
    if match.present is False:
        return f"{fn}(v)"
    return f"v is not UNSET and v is not None and {fn}(v)"  # an absent or null field equals nothing


def _namespace(scan: Fn, coarsen: Fn) -> dict[str, Any]:
    return {
        "UNSET": UNSET, "scan": scan, "coarsen": coarsen, "find": find, "number": classify_number,
        "ZERO": ZERO_DIGITS, "SHAPES": ISO_SHAPES, "tuple_new": tuple.__new__, "Raw": msgspec.Raw,
    }  # fmt: skip


def _uses_consent(node: Node) -> bool:
    return any(loc.rule.consent for loc in node.locations) or any(
        _uses_consent(s.child) for s in node.children if s.child
    )


def _why(rule: Any) -> str:
    """A rule's label for a comment in generated code (one line, no quote tricks)."""
    text = rule.label() if rule is not None else "read only"
    return " ".join(str(text).split())[:80]


def _comment(step: Step) -> str:
    """``# <key>: <operation> (<rule>)`` above the statements of one field."""
    return f"# {step.key}{'[]' if step.array else ''}: {step.op} ({_why(step.rule)})"


def _indent(lines: list[str], levels: int) -> list[str]:
    pad = "    " * levels
    return [pad + line for line in lines]


def _apply(
    node: Node,
    ns: dict[str, Any],
    guard: bool,
    scan: Fn,
    coarsen: Fn,
    counters: list[tuple[str, str]] | None = None,
) -> list[str]:
    """Statements running the field operations of ``node`` on ``obj`` (``granted`` in scope).

    How often each operation acted is counted on its step (``s0.count``), or, given
    ``counters``, in a local cell ``n_s0`` (cheaper) appended there with its operation."""
    lines: list[str] = []

    def count(name: str, op: str) -> str:
        if counters is None:
            return f"{name}.count += 1"
        counters.append((f"n_{name}", op))
        return f"n_{name} += 1"
    for i, step in enumerate(node.drops):
        ns[f"d{i}"] = step
        lines += [
            _comment(step),
            f"if obj.{step.attr} is not UNSET:",
            f"    obj.{step.attr} = UNSET",
            f"    {count(f'd{i}', step.op)}",
        ]
    for i, step in enumerate(node.leaves):
        ns[f"s{i}"], ns[f"fn{i}"] = step, step.fn
        inline = step.compiled.inline if step.compiled is not None else None
        fused = inline(f"_{i}_", "False") if inline is not None and not step.array else None
        tally = count(f"s{i}", step.op)
        lines += [_comment(step), f"v = obj.{step.attr}"]
        if fused is not None:  # the operation's common case inline, the rest a call
            test, op, names = fused
            ns.update(names)
            if len(op) == 1 and op[0].startswith("v = "):  # one expression: straight into the field
                op = [f"obj.{step.attr} = {op[0][4:]}"]
            else:
                op = [*op, f"obj.{step.attr} = v"]
            lines += [f"if {test}:", *_indent(op, 1), f"    {tally}"]
            lines.append("elif v is not UNSET and v is not None:")
        else:
            lines.append("if v is not UNSET and v is not None:")
        if step.array:
            lines.append(f"    v = [x for x in (None if e is None else fn{i}(e) for e in v) if x is not UNSET]")
        else:
            lines.append(f"    v = fn{i}(v)")
        lines += [f"    obj.{step.attr} = v", f"    {tally}"]
    for i, loc in enumerate(node.locations):
        ns[f"loc{i}"], ns[f"cl{i}"], ns[f"purpose{i}"] = loc, loc.fn, loc.rule.consent
        lat, lon = f"obj.{loc.lat.attr}", f"obj.{loc.lon.attr}"
        consented = f"purpose{i} in granted" if loc.rule.consent else "False"
        inline = loc.compiled.inline
        fused = inline(f"_loc{i}_", consented) if inline is not None else None
        tally = count(f"loc{i}", "coarsen_location")
        lines.append(f"# {loc.lat.key}, {loc.lon.key}: coarsen_location ({_why(loc.rule)})")
        call = [
            f"pt = cl{i}(la, lo, {consented})",
            "if pt is None:",
            f"    {lat} = UNSET",
            f"    {lon} = UNSET",
            "else:",
            f"    {lat}, {lon} = pt",
        ]
        lines += [
            f"la, lo = {lat}, {lon}",
            "if la.__class__ is float and lo.__class__ is float:",
            f"    {tally}",
        ]
        if fused is not None:  # the common case inline
            test, op, names = fused
            ns.update(names)
            lines += [f"    if {test}:", *_indent(op, 2), f"        {lat}, {lon} = pt", "    else:", *_indent(call, 2)]
        else:
            lines += _indent(call, 1)
        lines += [
            "elif la is not UNSET or lo is not UNSET:",  # nulls or a lone coordinate
            f"    pt = coarsen(loc{i}, la, lo, granted)",
            "    if pt is not UNSET:",
            f"        {lat}, {lon} = pt",
        ]
    for i, step in enumerate(node.children):
        assert step.child is not None  # children are the steps with a nested node
        child_apply, child_guard = build(step.child, guard, scan, coarsen)
        ns[f"ca{i}"], ns[f"cg{i}"] = child_apply, child_guard
        lines += [f"# {step.key}{'[]' if step.array else ''}: the nested object's rules (ca{i})",
                  f"if obj.{step.attr}:", f"    v = obj.{step.attr}"]  # a Struct (always true) or a list
        if step.array:
            lines += ["    for e in v:", "        if e is not None:", f"            ca{i}(e, granted)"]
        else:
            lines += [f"    ca{i}(v, granted)"]
    return lines


def _guard(
    node: Node,
    ns: dict[str, Any],
    guard: bool,
    scan: Fn,
    coarsen: Fn,
    hit: Callable[[str, str], str],
    skip: Sequence[Step] = (),
) -> list[str]:
    """Statements of the leak guard over the kept values of ``obj`` (``depth`` in scope).

    ``hit(label, kind)`` is the statement for a detection (a return). The declared
    type of a kept field is enforced by the decoder, so a ``string`` field is only
    ever checked as a string, an ``integer`` one as an int. ``skip``: kept fields
    the decoder has already limited to values that pass (see build_runner)."""
    lines: list[str] = []
    for i, step in enumerate(node.kept):
        if any(step is s for s in skip):
            continue
        ns[f"k{i}"], ns[f"e{i}"], ns[f"l{i}"] = step.key, step.enabled if guard else frozenset(), step.label
        lines.append(f"# leak guard: {step.key}{'[]' if step.array else ''} (kept by {step.label!r})")
        kind = getattr(step.rule, "type", "any")
        if step.array:  # ``path[]``: the value is a list of that type
            kind = "array"
        if not guard:  # the guard is off, but max_depth still holds for kept free-form values
            if kind in ("any", "object", "array"):
                lines += [
                    f"v = obj.{step.attr}",
                    "if v.__class__ is dict or v.__class__ is list:",
                    f"    scan(v, e{i}, k{i}, depth)",
                ]
            continue
        string = [  # a value found clean before, words and timestamps hold no identifier
            f"if v and v not in ok{i} and not {_ISO}:",  # first: most kept strings (ids, words) repeat;
            "    if v.isalpha():",  # timestamps are new each time, so never remembered
            f"        if len(v) <= {VERDICT_MAX_LEN}:",
            f"            ok{i}.put(v, True)",
            "    else:",
            f"        h = find(v, e{i})",
            "        if h:",
            f"            {hit(f'l{i}', 'h[0][0]')}",
            f"        if len(v) <= {VERDICT_MAX_LEN}:",
            f"            ok{i}.put(v, True)",
        ]
        integer = [
            f"if not -{NUMBER_LIMIT} < v < {NUMBER_LIMIT}:",
            "    h = number(v)",
            f"    if h in e{i}:",
            f"        {hit(f'l{i}', 'h')}",
        ]
        other = [
            f"h = scan(v, e{i}, k{i}, depth)",
            "if h is not None:",
            f"    {hit(f'l{i}', 'h')}",
        ]
        if kind in ("string", "any"):
            ns[f"ok{i}"] = BoundedCache(VERDICT_CACHE)  # values find() returned nothing for
        lines.append(f"v = obj.{step.attr}")
        if kind == "string":
            lines += string  # a str, None or UNSET (both false)
        elif kind == "integer":
            lines += ["if v.__class__ is int:", *_indent(integer, 1)]
        elif kind == "number":  # a float is checked like an int (4111111111111111.0 is a card)
            lines += ["if v.__class__ is int:", *_indent(integer, 1)]
            as_float = other if COORDINATE_KEYS.fullmatch(step.key) else integer
            lines += ["elif v.__class__ is float:", *_indent(as_float, 1)]
        else:
            lines += [
                "c = v.__class__",
                "if c is str:",
                *_indent(string, 1),
                "elif c is int:",
                *_indent(integer, 1),
                "elif v is not UNSET and v is not None and c is not bool:",
                *_indent(other, 1),
            ]
    for i, step in enumerate(node.children):
        assert step.child is not None  # children are the steps with a nested node
        ns[f"cg{i}"] = ns.get(f"cg{i}") or build(step.child, guard, scan, coarsen)[1]
        lines += [f"if obj.{step.attr}:", f"    v = obj.{step.attr}"]  # a Struct (always true) or a list
        if step.array:
            lines += [
                "    for e in v:",
                "        if e is not None:",
                f"            h = cg{i}(e, depth - 1)",
                "            if h is not None:",
                f"                {hit('h[0]', 'h[1]')}",
            ]
        else:
            lines += [f"    h = cg{i}(v, depth - 1)", "    if h is not None:", f"        {hit('h[0]', 'h[1]')}"]
    return lines


def _define(lines: list[str], ns: dict[str, Any], name: str) -> Fn:
    """Compile generated ``lines`` defining ``name``, under a file name that carries the policy and is
    registered in ``linecache`` (as attrs does), so a traceback through it shows the line and the
    comment naming the field and rule; the source is also kept on the function (``__source__``)."""
    global _SERIAL
    source = "\n".join(lines) + "\n"
    _SERIAL += 1
    filename = f"<gateway policy {_BUILDING[-1] if _BUILDING else '?'}: {name} #{_SERIAL}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    local: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), dict(ns), local)
    fn: Fn = local[name]
    fn.__source__ = source  # type: ignore[attr-defined]
    if _SOURCES:
        _SOURCES[-1].append((filename, source))
    return fn


_SERIAL = 0
_BUILDING: list[str] = []  # the policy whose code is being generated (compiling is single-threaded)
_SOURCES: list[list[tuple[str, str]]] = []  # its generated functions, for ``gateway check --dump-code``


def sources(run: Fn) -> list[tuple[str, str]]:
    """``(file name, source)`` of every function generated for a plan's ``run``, outermost last."""
    return list(getattr(run, "__sources__", []))
