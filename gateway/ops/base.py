"""What every field operation shares: its rule Struct base, build context and helpers.

An operation is a rule Struct (its validated parameters, decoded straight from
the policy TOML) plus a ``build`` method returning a ``Compiled``: the callable
``value -> value`` used on the hot path (returning ``UNSET`` removes the field),
optionally its inline form for the code generator and a ``refresh`` the engine
calls when the pseudonym epoch rolls over.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET

from gateway.keys import Keyring

Transform = Callable[[Any], Any]



class Inline(NamedTuple):
    """An operation's common case as Python source, for the plan's code generator
    (gateway.policy.codegen) to paste into the generated hot path instead of a call.

    When the expression ``test`` holds, the statements ``lines`` compute what the call would
    return; otherwise the generated code makes the call. For a field operation ``test`` reads
    the local ``v`` (and implies that it is present: not None, not UNSET) and ``lines`` set
    ``v`` (``UNSET`` removes the field); for ``coarsen_location`` they read the float locals
    ``la``, ``lo`` and set ``pt``, the point. ``names`` are the globals they use, each starting
    with the prefix the generator gave. tests/test_ops.py checks every inline form against
    its call.
    """

    test: str
    lines: list[str]
    names: dict[str, Any]


# ``inline(prefix, consented) -> Inline | None``: ``consented`` is the Python expression for
# the consent the call would be given (only ``coarsen_location`` uses it); None when these
# parameters have no inline form.
InlineForm = Callable[[str, str], Inline | None]
ValueForm = Callable[[str], "tuple[str, list[str], dict[str, Any]] | None"]


@dataclass(frozen=True, slots=True, eq=False)
class Compiled:
    """What ``Rule.build`` returns: the contract between an operation, the compiler and the
    generated code."""

    call: Callable[..., Any]  # value -> value (UNSET removes it); coarsen_location: (lat, lon, consented)
    inline: InlineForm | None = None
    refresh: Callable[[], None] | None = None  # the engine calls it when the epoch generation changes

    def __call__(self, *args: Any) -> Any:
        """``call``, for tools and tests; the hot path holds ``call`` itself."""
        return self.call(*args)


def per_value(form: ValueForm) -> InlineForm:
    """The inline form of a field operation (which takes no consent) from ``form(prefix)``."""

    def inline(prefix: str, consented: str) -> Inline | None:
        found = form(prefix)
        return None if found is None else Inline(*found)

    return inline

SCALAR = str | int | float | bool


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """Fields common to every rule: the clause it enforces and an optional name."""

    why: str = ""
    name: str = ""  # label in metrics and errors; defaults to the path
    required: bool = False  # reject the message (missing_field) when absent or null

    # The JSON types the operation accepts; anything else is a wrong_type rejection.
    accepts: ClassVar[Any] = Any

    def label(self) -> str:
        return self.name or str(getattr(self, "path", "")) or self.op_name()

    @classmethod
    def op_name(cls) -> str:
        return str(cls.__struct_config__.tag)

    def build(self, env: BuildEnv) -> Compiled:  # pragma: no cover - abstract
        raise NotImplementedError


class FieldRule(Rule, kw_only=True):
    """A rule on one field path (``payment.upi_ref``, ``cells[].cell_id``)."""

    path: str = ""


class Epochs:
    """Current pseudonym epoch ids; advanced by the engine once per message.

    ``generation`` changes whenever a daily or monthly epoch rolls over, so
    that pseudonymisers re-derive their key and clear their cache.
    """

    def __init__(self, now: float | None = None):
        self.generation = 0
        self.start = self.boundary = 0.0  # the current day: [start, boundary)
        self.ids = {"never": "0", "daily": "", "monthly": ""}
        self.advance(time.time() if now is None else now)

    def advance(self, now: float) -> None:
        if self.start <= now < self.boundary:
            return
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.start = day.timestamp()
        self.boundary = self.start + 86400
        self.ids = {"never": "0", "daily": day.strftime("%Y-%m-%d"), "monthly": day.strftime("%Y-%m")}
        self.generation += 1


@dataclass
class BuildEnv:
    """What a rule may use when it is compiled: keys, the epoch clock, counters."""

    keyring: Keyring
    epochs: Epochs
    stats: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule label, event) -> count
    cache_size: int = 65536
    pack: str = ""  # the policy's name: keys are per pack unless a link domain is declared
    link_domain: str = ""  # the policy's declared linkage domain ("" = none)
    field: str = ""  # the rule's field path, or "topic_<name>" for a topic level


K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """A dict that forgets its oldest entry beyond ``limit`` (FIFO, O(1))."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.limit:
            del self[next(iter(self))]
        self[key] = value
        return value


__all__ = [
    "SCALAR", "UNSET", "BoundedCache", "BuildEnv", "Compiled", "Epochs", "FieldRule", "Inline", "InlineForm", "Rule",
    "Transform", "per_value",
]  # fmt: skip
