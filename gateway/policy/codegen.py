"""Generate the per-object hot-path functions of a fail-closed plan.

For each object of the schema two functions are generated as straight-line
Python, the way ``dataclasses`` generates ``__init__``: ``apply(obj, granted)``
runs the field operations and ``guard(obj, depth)`` is the leak guard over the
kept values. Direct attribute access (``obj.f3``) and no loop over step
objects make a field cost a few bytecodes instead of a loop turn with several
lookups, which matters when the whole budget per message is a few microseconds.
The generated source is kept on the function (``__source__``) for debugging.
"""

from __future__ import annotations

from typing import Any, Callable

from msgspec import UNSET

from gateway.ops.detect import ISO_TIME, classify_number, find
from gateway.policy.compile import Node

NUMBER_LIMIT = 100_000_000_000  # integers below this cannot be a UTR, IMEI or card number


def build(node: Node, guard: bool, scan: Callable, coarsen: Callable) -> tuple[Callable, Callable]:
    """``(apply, guard)`` for ``node`` and, recursively, its children."""
    ns: dict[str, Any] = {
        "UNSET": UNSET, "scan": scan, "coarsen": coarsen, "find": find, "number": classify_number, "iso": ISO_TIME.fullmatch,
    }  # fmt: skip
    apply_lines = ["def apply(obj, granted):"]
    guard_lines = ["def guard(obj, depth):"]

    for i, step in enumerate(node.drops):
        ns[f"d{i}"] = step
        apply_lines += [
            f"    if obj.{step.attr} is not UNSET:",
            f"        obj.{step.attr} = UNSET",
            f"        d{i}.count += 1",
        ]
    for i, step in enumerate(node.leaves):
        ns[f"s{i}"], ns[f"fn{i}"] = step, step.fn
        value = f"[x for x in (None if e is None else fn{i}(e) for e in v) if x is not UNSET]" if step.array else f"fn{i}(v)"
        apply_lines += [
            f"    v = obj.{step.attr}",
            "    if v is not UNSET and v is not None:",
            f"        obj.{step.attr} = {value}",
            f"        s{i}.count += 1",
        ]
    for i, loc in enumerate(node.locations):
        ns[f"loc{i}"], ns[f"cl{i}"], ns[f"purpose{i}"] = loc, loc.fn, loc.rule.consent
        lat, lon = f"obj.{loc.lat.attr}", f"obj.{loc.lon.attr}"
        apply_lines += [
            f"    la, lo = {lat}, {lon}",
            "    if la.__class__ is float and lo.__class__ is float:",  # the common case, inline
            f"        p = cl{i}(la, lo, purpose{i} in granted)",
            f"        loc{i}.count += 1",
            f"        {lat}, {lon} = (UNSET, UNSET) if p is None else p",
            "    elif la is not UNSET or lo is not UNSET:",  # nulls or a lone coordinate
            f"        p = coarsen(loc{i}, la, lo, granted)",
            "        if p is not UNSET:",
            f"            {lat}, {lon} = p",
        ]
    for i, step in enumerate(node.kept):
        ns[f"k{i}"], ns[f"e{i}"], ns[f"l{i}"] = step.key, step.enabled if guard else frozenset(), step.label
        guard_lines.append(f"    v = obj.{step.attr}")
        if guard:
            # Fast paths for what kept fields mostly hold: words, small numbers, flags.
            guard_lines += [
                "    c = v.__class__",
                "    if c is str:",
                "        if v and not v.isalpha() and not (len(v) <= 35 and iso(v)):",
                f"            h = find(v, e{i})",
                "            if h:",
                f"                return l{i}, h[0][0]",
                "    elif c is int:",
                f"        if not -{NUMBER_LIMIT} < v < {NUMBER_LIMIT}:",
                "            h = number(v)",
                f"            if h in e{i}:",
                f"                return l{i}, h",
                "    elif v is not UNSET and v is not None and c is not bool:",
                f"        h = scan(v, e{i}, k{i}, depth)",
                "        if h is not None:",
                f"            return l{i}, h",
            ]
        else:  # the guard is off, but max_depth still holds for kept free-form values
            guard_lines += [
                "    if v.__class__ is dict or v.__class__ is list:",
                f"        scan(v, e{i}, k{i}, depth)",
            ]
    for i, step in enumerate(node.children):
        child_apply, child_guard = build(step.child, guard, scan, coarsen)
        ns[f"ca{i}"], ns[f"cg{i}"] = child_apply, child_guard
        apply_lines += [f"    v = obj.{step.attr}", "    if v is not UNSET and v is not None:"]
        guard_lines += [f"    v = obj.{step.attr}", "    if v is not UNSET and v is not None:"]
        if step.array:
            apply_lines += ["        for e in v:", "            if e is not None:", f"                ca{i}(e, granted)"]
            guard_lines += [
                "        for e in v:",
                "            if e is not None:",
                f"                h = cg{i}(e, depth - 1)",
                "                if h is not None:",
                "                    return h",
            ]
        else:
            apply_lines += [f"        ca{i}(v, granted)"]
            guard_lines += [f"        h = cg{i}(v, depth - 1)", "        if h is not None:", "            return h"]
    apply_lines.append("    return None")
    guard_lines.append("    return None")
    return _define(apply_lines, ns, "apply"), _define(guard_lines, ns, "guard")


def _define(lines: list[str], ns: dict[str, Any], name: str) -> Callable:
    source = "\n".join(lines) + "\n"
    local: dict[str, Any] = {}
    exec(compile(source, f"<plan {name}>", "exec"), dict(ns), local)  # noqa: S102 - our own generated code
    fn = local[name]
    fn.__source__ = source
    return fn
