"""The policy file, as msgspec Structs: the schema *is* the type.

A policy TOML file is decoded straight into ``Policy``; every table rejects
keys it does not know, and each operation validates its own parameters, so a
typo in a policy is an error with a path, never a silently ignored rule.
See docs/policy.md for the language.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal, TypeAlias, get_args

import msgspec

from gateway.ops import (
    FIELD_RULES,
    TOPIC_RULES,
    Bucket,
    BucketTime,
    CoarsenLocation,
    Drop,
    Encrypt,
    Generalise,
    Keep,
    Mask,
    Pseudonymise,
    Replace,
    Round,
    Scrub,
    TruncateIp,
)
from gateway.ops.base import SCALAR
from gateway.ops.basic import fold as fold  # drop_when compares text folded (compile imports it from here)

# Spelled out so type checkers see the members; tagged on "op". The checks keep them equal to
# the registries in gateway/ops/__init__.py, which the docs tests and `gateway check` walk.
FieldRuleT: TypeAlias = (
    Keep | Drop | Pseudonymise | Encrypt | TruncateIp | CoarsenLocation
    | Round | Bucket | BucketTime | Mask | Replace | Generalise | Scrub
)  # fmt: skip
TopicRuleT: TypeAlias = Keep | Pseudonymise | Encrypt | Mask | Replace | Generalise
assert set(get_args(FieldRuleT)) == set(FIELD_RULES), "FieldRuleT must list every FIELD_RULES member"
assert set(get_args(TopicRuleT)) == set(TOPIC_RULES), "TopicRuleT must list every TOPIC_RULES member"
LABEL = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Reasons the engine itself rejects a message for (metric label values); a
# policy's own drop_when reasons may not reuse them.
BUILT_IN_REASONS = {
    "no_route": "no policy applies to the topic",
    "bad_topic": "a captured topic level could not be transformed into a topic level",
    "too_large": "payload larger than the policy's max_bytes",
    "not_json": "payload is not valid JSON",
    "not_object": "payload is not a JSON object",
    "wrong_type": "a declared field has a type its rule does not accept",
    "missing_field": "a required field is missing or null",
    "too_deep": "nesting deeper than the policy's max_depth",
    "leak": "the leak guard found an identifier in what would be forwarded",
    "bad_shape": "a value lacks the shape its rule needs to keep part of it in clear (on_mismatch = \"reject\")",
}


class Meta(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: str
    description: str = ""
    source: str = ""  # the privacy policy this file enforces
    default: Literal["drop", "keep"] = "drop"  # what happens to fields no rule names
    max_bytes: int = 65536
    max_depth: int = 16
    output: Literal["json", "msgpack"] = "json"
    leak_guard: bool = True
    # Whose consent counts: "{capture}" (a topic segment) or a payload path.
    device: str | None = None
    # Leak guard: kept numbers under latitude/longitude-like names may have at
    # most this many decimals. Default: the coarsest location rule's precision, else 3.
    coordinate_decimals: int | None = None
    retention: str = ""  # e.g. "P90D": forwarded as a user property for the cloud side
    # Pseudonym and encryption keys are per pack; packs naming the same link_domain share them.
    link_domain: str = ""

    def __post_init__(self) -> None:
        if not LABEL.fullmatch(self.name.replace("-", "_")):
            raise ValueError("name must be lower-case letters, digits, '-' or '_'")
        if not 1 <= self.max_bytes <= 16 * 1024 * 1024:
            raise ValueError("max_bytes must be between 1 and 16777216")
        if not 1 <= self.max_depth <= 64:
            raise ValueError("max_depth must be between 1 and 64")
        if self.device is not None and not re.fullmatch(
            r"\{[a-z_][a-z0-9_]*\}|[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*", self.device
        ):
            raise ValueError('device is "{capture}" (a topic level) or a dotted payload path such as "imei"')
        if self.link_domain and not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", self.link_domain):
            raise ValueError("link_domain must match [a-z][a-z0-9_-]* (at most 63 characters)")


class Route(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    topics: list[str]  # MQTT filters; "{name}" is a "+" whose value is captured
    upstream: str  # template, e.g. "fleet/{imei}/location"
    capture: dict[str, TopicRuleT] = {}
    qos: Literal[0, 1] = 1
    expiry_s: int | None = None  # MQTT 5 message expiry interval on what is forwarded

    def __post_init__(self) -> None:
        if self.expiry_s is not None and not 1 <= self.expiry_s <= 4294967295:
            raise ValueError("expiry_s must be between 1 and 4294967295 seconds")


class Match(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A test on one field: present, equal to a value, or one of several.

    Text is compared normalised (Unicode NFKC, case-folded, without spaces or
    invisible characters), so ``"QR"``, ``" qr "`` and fullwidth ``"\\uff51\\uff52"`` all equal ``"qr"``."""

    path: str
    present: bool | None = None
    equals: SCALAR | None = None
    one_of: list[SCALAR] | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.present, self.equals, self.one_of)) != 1:
            raise ValueError("set exactly one of present, equals or one_of")
        if "[]" in self.path:
            raise ValueError("drop_when paths cannot go through arrays")


class DropWhen(Match, kw_only=True, forbid_unknown_fields=True):
    """Drop the whole message when a field is present, equals a value, or is one of several,
    ``unless`` another field passes its test (an allow-list: a missing or null field never does)."""

    reason: str
    unless: Match | None = None
    why: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not LABEL.fullmatch(self.reason):
            raise ValueError("reason must match [a-z][a-z0-9_]* (it is a metric label)")
        if self.reason in BUILT_IN_REASONS:
            raise ValueError(f"reason {self.reason!r} is a built-in rejection reason; choose another name")


class Test(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    topic: str
    input: dict[str, Any]
    name: str = ""
    expect: dict[str, Any] | None = None
    expect_drop: bool = False
    expect_reason: str | None = None
    expect_topic: str | None = None
    consent: list[str] = []  # purposes on record for the message's device
    now: str = "2026-01-15T12:00:00Z"  # fixes the pseudonym epoch

    def __post_init__(self) -> None:
        try:
            if datetime.fromisoformat(self.now).tzinfo is None:
                raise ValueError
        except ValueError:
            raise ValueError('now must be an ISO 8601 time with a zone, e.g. "2026-01-15T12:00:00Z"') from None
        if self.expect_drop == (self.expect is not None):
            raise ValueError("a test needs either expect (the output) or expect_drop = true")
        if self.expect_reason is not None and not self.expect_drop:
            raise ValueError("expect_reason goes with expect_drop = true")


class Policy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy: Meta
    route: Route
    field: list[FieldRuleT] = []
    drop_when: list[DropWhen] = []
    test: list[Test] = []
