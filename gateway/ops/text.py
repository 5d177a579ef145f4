"""Free text: ``scrub`` replaces identifiers inside crash logs, error messages and configs."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.ops import detect
from gateway.ops.base import BoundedCache, BuildEnv, Compiled, FieldRule, per_value

CLEAN_CACHE = 1024  # per scrub rule: recent texts find() returned nothing for
CLEAN_MAX_LEN = 512  # only texts this short are remembered (at most 512 KiB per rule)


class Scrub(FieldRule, tag="scrub"):
    """Replace e-mails, phones, IPs, card numbers, UPI VPAs, IMEIs, UTRs and
    secrets in a string by typed tokens (``[EMAIL]``, ``[CARD]`` ...)."""

    accepts = str
    detectors: list[str] = msgspec.field(default_factory=lambda: list(detect.DETECTORS))

    def __post_init__(self) -> None:
        unknown = set(self.detectors) - set(detect.DETECTORS)
        if unknown:
            raise ValueError(f"unknown detector(s) {sorted(unknown)}; known: {list(detect.DETECTORS)}")

    def build(self, env: BuildEnv) -> Compiled:
        enabled = frozenset(self.detectors)
        clean: BoundedCache[str, bool] = BoundedCache(CLEAN_CACHE)  # recent texts with nothing to scrub

        def scrub(text: str) -> str:
            # Error messages and stack frames repeat: a text found clean once is clean again.
            if text in clean:
                return text
            out = detect.scrub(text, enabled)
            if out is text and len(text) <= CLEAN_MAX_LEN:
                clean.put(text, True)
            return out

        def fuse(p: str) -> tuple[str, list[str], dict[str, Any]]:  # a text remembered clean: as it is
            return f"v.__class__ is str and v in {p}clean", ["v = v"], {f"{p}clean": clean}

        return Compiled(scrub, per_value(fuse))
