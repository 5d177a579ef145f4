"""Free text: ``scrub`` replaces identifiers inside crash logs, error messages and configs."""

from __future__ import annotations

import msgspec

from gateway.ops import detect
from gateway.ops.base import BuildEnv, Compiled, FieldRule


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
        return Compiled(lambda text: detect.scrub(text, enabled))
