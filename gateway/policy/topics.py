"""MQTT topic filters with named captures, and upstream topic templates.

A policy's ``topics`` are MQTT filters where ``{name}`` stands for one level
(like ``+``) whose value is captured. The upstream template may use only
captures that the policy transforms (``[route.capture.<name>]``): a device id
in a topic is as sensitive as one in a payload.
"""

from __future__ import annotations

import re

NAME = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class TopicFilter:
    """One filter: ``match(levels)`` gives the captured values, or None."""

    def __init__(self, text: str):
        if not text or "\x00" in text:
            raise ValueError(f"invalid topic filter {text!r}")
        self.text = text
        self.levels: list[str | None] = []  # literal, or None for + / {name}
        self.names: list[tuple[int, str]] = []
        self.multi = False
        parts = text.split("/")
        for i, part in enumerate(parts):
            m = NAME.fullmatch(part)
            if part == "#":
                if i != len(parts) - 1:
                    raise ValueError(f"'#' must be the last level in {text!r}")
                self.multi = True
            elif part == "+" or m:
                self.levels.append(None)
                if m:
                    if any(n == m.group(1) for _, n in self.names):
                        raise ValueError(f"capture {{{m.group(1)}}} appears twice in {text!r}")
                    self.names.append((i, m.group(1)))
            elif "+" in part or "#" in part or "{" in part or "}" in part:
                raise ValueError(f"invalid level {part!r} in {text!r}")
            else:
                self.levels.append(part)

    @property
    def subscription(self) -> str:
        """The plain MQTT filter to subscribe to."""
        return NAME.sub("+", self.text)

    def match(self, levels: list[str]) -> dict[str, str] | None:
        n = len(self.levels)
        if len(levels) < n or (len(levels) > n and not self.multi):
            return None
        if levels[0].startswith("$") and (self.levels[:1] == [None] or not self.levels):
            return None  # a filter starting with a wildcard never matches $SYS-style topics (MQTT 4.7.2)
        for want, got in zip(self.levels, levels, strict=False):  # levels may be longer under a "#"
            if want is not None and want != got:
                return None
        return {name: levels[i] for i, name in self.names}


class Template:
    """An upstream topic template such as ``fleet/{imei}/location``."""

    def __init__(self, text: str):
        if not text or "+" in text or "#" in text:
            raise ValueError(f"upstream topic {text!r} must be a concrete topic (no wildcards)")
        if "{" in NAME.sub("", text) or "}" in NAME.sub("", text):
            raise ValueError(f"upstream topic {text!r}: use {{name}} with a lower-case capture name, no other braces")
        self.text = text
        self.names = NAME.findall(text)

    def render(self, values: dict[str, str]) -> str:
        return self.text.format_map(values)


def safe_level(value: object) -> str | None:
    """A transformed capture as a topic level, or None if it cannot be one."""
    text = str(value)
    if not text or "/" in text or "+" in text or "#" in text or "\x00" in text:
        return None
    return text
