"""The simple operations: ``keep``, ``drop``, ``replace``, ``generalise``, ``mask``."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

import msgspec

from gateway.ops.base import SCALAR, BoundedCache, BuildEnv, Compiled, FieldRule, per_value
from gateway.ops.detect import ALL, DETECTORS, find

PREFIX_CACHE = 1024  # per prefix generalise rule: recent texts and the class they map to
PREFIX_MAX_LEN = 128  # only texts this short are remembered

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
    matching key wins. With ``fold = true`` values and keys are compared folded
    (Unicode NFKC, case-folded, without spaces or invisible characters, as
    ``drop_when`` compares them), so ``" CARD "`` and ``"Card"`` are ``card``."""

    accepts = SCALAR
    map: dict[str, SCALAR]
    default: SCALAR = "other"
    match: Literal["exact", "prefix"] = "exact"
    fold: bool = False

    def __post_init__(self) -> None:
        if not self.map:
            raise ValueError("map must not be empty")
        if self.fold:
            seen: dict[str, SCALAR] = {}
            for k, v in self.map.items():
                if seen.setdefault(fold(k), v) != v:
                    raise ValueError(f"fold: keys that fold to {fold(k)!r} map to different values")

    def build(self, env: BuildEnv) -> Compiled:
        table, default = self.map, self.default
        if self.fold:
            table = {fold(k): v for k, v in table.items()}
        if self.match == "exact" and self.fold:
            generalise_folded = lambda v: table.get(fold(v if v.__class__ is str else _key(v)), default)  # noqa: E731

            def fuse_folded(p: str) -> tuple[str, list[str], dict[str, Any]]:  # a value already folded inline
                return "v.__class__ is str and v in " + f"{p}table", [f"v = {p}table[v]"], {f"{p}table": table}

            return Compiled(generalise_folded, per_value(fuse_folded))
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

        folded = self.fold
        seen: BoundedCache[str, Any] = BoundedCache(PREFIX_CACHE)  # recent texts and their class

        def generalise_prefix(v: Any) -> Any:
            if v.__class__ is str and (out := seen.get(v, seen)) is not seen:
                return out  # OS and browser strings repeat from message to message
            text = v if isinstance(v, str) else _key(v)
            m = longest_first(fold(text) if folded else text)
            out = default if m is None else table[m.group()]
            if v.__class__ is str and len(v) <= PREFIX_MAX_LEN:
                seen.put(v, out)
            return out

        def fuse_prefix(p: str) -> tuple[str, list[str], dict[str, Any]]:  # a remembered string without the call
            test = f"v.__class__ is str and (r := {p}seen.get(v, {p}seen)) is not {p}seen"
            return test, ["v = r"], {f"{p}seen": seen}

        return Compiled(generalise_prefix, per_value(fuse_prefix))


def fold(text: str) -> str:
    """Text as ``drop_when`` and ``generalise`` with ``fold = true`` compare it: NFKC, case-folded,
    without white space or invisible (control and format) characters, so ``"PIN"``, ``" pin "``,
    fullwidth ``"\\uff30in"`` and ``"p\\u200bin"`` are one."""
    if text.isascii() and text.isalnum():  # the common case, e.g. "card": nothing to normalise or remove
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf"))


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
