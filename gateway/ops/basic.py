"""The simple operations: ``keep``, ``drop``, ``replace``, ``generalise``, ``mask``."""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from gateway.ops.base import SCALAR, BuildEnv, Compiled, FieldRule, per_value
from gateway.ops.detect import ALL, DETECTORS, find

TYPES: dict[str, Any] = {
    "any": Any,
    "string": str,
    "integer": int,
    "number": int | float,
    "boolean": bool,
    "object": dict[str, Any],
    "array": list[Any],
}


class Keep(FieldRule, tag="keep"):
    """Forward the value unchanged. The leak guard still scans it, unless told
    that a detector is expected here (``guard_allow = ["ip"]`` for a firmware
    version like "1.2.3.4")."""

    type: Literal["any", "string", "integer", "number", "boolean", "object", "array"] = "any"
    guard_allow: list[str] = []

    def __post_init__(self) -> None:
        unknown = set(self.guard_allow) - set(DETECTORS)
        if unknown:
            raise ValueError(f"guard_allow: unknown detector(s) {sorted(unknown)}; known: {list(DETECTORS)}")

    @property
    def accepts(self) -> Any:
        return TYPES[self.type]

    def build(self, env: BuildEnv) -> Compiled:
        return Compiled(_identity)


def _identity(value: Any) -> Any:
    return value


class Drop(FieldRule, tag="drop"):
    """Remove the field. Declaring a drop documents the decision (with ``why``)
    and keeps the field out of the unknown-field count."""

    accepts = msgspec.Raw

    def build(self, env: BuildEnv) -> Compiled:  # never called: the executor drops directly
        raise AssertionError("drop is applied by the executor")


class Replace(FieldRule, tag="replace"):
    """Replace any present value by a constant."""

    accepts = msgspec.Raw
    value: SCALAR

    def build(self, env: BuildEnv) -> Compiled:
        constant = self.value
        return Compiled(
            lambda _: constant,
            per_value(lambda p: ("v is not UNSET and v is not None", [f"v = {p}value"], {f"{p}value": constant})),
        )


class Generalise(FieldRule, tag="generalise"):
    """Map values to broader classes (``"Android 14.1" -> "Android"``); anything
    not in ``map`` becomes ``default``. With ``match = "prefix"`` the longest
    matching key wins."""

    accepts = SCALAR
    map: dict[str, SCALAR]
    default: SCALAR = "other"
    match: Literal["exact", "prefix"] = "exact"

    def __post_init__(self) -> None:
        if not self.map:
            raise ValueError("map must not be empty")

    def build(self, env: BuildEnv) -> Compiled:
        table, default = self.map, self.default
        if self.match == "exact":
            generalise = lambda v: table.get(v if v.__class__ is str else _key(v), default)  # noqa: E731

            def fuse(p: str) -> tuple[str, list[str], dict[str, Any]]:
                return (
                    "v.__class__ is str",
                    [f"v = {p}table.get(v, {p}default)"],
                    {f"{p}table": table, f"{p}default": default},
                )

            return Compiled(generalise, per_value(fuse))
        # One regex over the keys, longest first: alternation tries them in that order, so the
        # first that matches is the longest matching key (as a loop of startswith would find).
        longest_first = re.compile("|".join(re.escape(p) for p in sorted(table, key=len, reverse=True))).match

        def generalise_prefix(v: Any) -> Any:
            m = longest_first(v if isinstance(v, str) else _key(v))
            return default if m is None else table[m.group()]

        return Compiled(generalise_prefix)


def _key(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


class Mask(FieldRule, tag="mask"):
    """Keep only the last ``keep_last`` characters (``************1111``).

    The tail is kept only when at least as many characters are masked as kept and
    the leak guard finds nothing in it; otherwise the value is masked entirely (so
    ``keep_last = 4`` never shows 4 of a 5-digit PIN)."""

    accepts = str | int
    keep_last: int = 4
    char: str = "*"

    def __post_init__(self) -> None:
        if not 0 <= self.keep_last <= 8:
            raise ValueError("keep_last must be between 0 and 8")
        if len(self.char) != 1:
            raise ValueError("char must be a single character")

    def build(self, env: BuildEnv) -> Compiled:
        k, c = self.keep_last, self.char

        def mask(v: str | int) -> str:
            text = str(v)
            if len(text) < 2 * k or not k or find(text[-k:], ALL):
                return c * len(text)
            return c * (len(text) - k) + text[-k:]

        return Compiled(mask)
