"""Numbers and time: ``round``, ``bucket`` and ``bucket_time``.

A battery at 87.3 % or a speed of 63 km/h is rarely identifying, but a precise
odometer reading or a timestamp to the second can single out one trip. These
operations keep the signal while dropping the precision.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any, Literal

from msgspec import UNSET

from gateway.ops.base import BoundedCache, BuildEnv, Compiled, FieldRule, per_value

NUMBER = int | float


def _decimals_of(step: float) -> int:
    """Decimal places of a step as written (0.25 -> 2, 1e-05 -> 5, 10.0 -> 0)."""
    exponent = Decimal(repr(float(step))).normalize().as_tuple().exponent
    return max(0, -int(exponent))  # a finite step: the exponent is an int


def _multiples(step: float, floor: bool, stats: Counter[tuple[str, str]] | None = None, label: str = "") -> Compiled:
    """Nearest (or floor) multiple of ``step`` with a clean repr: n * 0.5 gives 2.5, not 2.5000000001.

    Integer arithmetic on the scaled step instead of round(x, n), which is ~10x slower.
    An integer input with an integral step stays an integer. A number whose multiple
    does not fit a float (a 400-digit JSON integer; 1.7e308 rounded up to a step of 3)
    is removed and counted as ``invalid_number``."""
    digits = _decimals_of(step)
    scale = 10**digits
    istep = round(step * scale)
    integral = digits == 0

    def multiple(v: int | float) -> Any:
        if v.__class__ is float and not math.isfinite(v):
            return UNSET
        try:
            q = v / step
            if floor:
                n = math.floor(q)
                if q - n > 1 - 1e-9:  # 0.3 / 0.1 is 2.9999999999999996: that is 3 steps
                    n += 1
            else:
                n = round(q)
            if integral and v.__class__ is int:
                return n * istep
            return n * istep / scale
        except OverflowError:  # an int beyond 1.8e308, an infinite quotient, or a float multiple past the maximum
            if stats is not None:
                stats[(label, "invalid_number")] += 1
            return UNSET

    def fuse(p: str) -> tuple[str, list[str], dict[str, Any]] | None:
        # An int inline, in integers. Below 2**31 (and with a step below 2**21) the float
        # quotient v / step is within 2**-23 of the exact one, while an exact quotient that is
        # not whole is at least 2**-21 from a whole number (and one that is not a half, that
        # far from a half): math.floor and round (half to even) of the float quotient are the
        # integer floor and round-half-even.
        if not integral or istep >= 2**21:
            return None
        test = "v.__class__ is int and -2147483648 < v < 2147483648"
        if floor:
            return test, [f"v = v // {istep} * {istep}"], {}
        return test, [
            f"n = v // {istep}",
            f"m = v - n * {istep}",
            f"if m + m > {istep} or m + m == {istep} and n & 1:",
            "    n += 1",
            f"v = n * {istep}",
        ], {}

    return Compiled(multiple, per_value(fuse))


class Round(FieldRule, tag="round"):
    """Round to ``decimals`` places, or to the nearest multiple of ``step``."""

    accepts = NUMBER
    decimals: int | None = None
    step: float | None = None

    def __post_init__(self) -> None:
        if (self.decimals is None) == (self.step is None):
            raise ValueError("set exactly one of decimals or step")
        if self.step is not None and not self.step > 0:
            raise ValueError("step must be > 0")
        if self.decimals is not None and not -9 <= self.decimals <= 9:
            raise ValueError("decimals must be between -9 and 9")

    def build(self, env: BuildEnv) -> Compiled:
        if self.decimals is not None:
            d = self.decimals
            # an int is always finite (math.isfinite would overflow on a huge one)
            return Compiled(lambda v: UNSET if v.__class__ is float and not math.isfinite(v) else round(v, d))
        assert self.step is not None  # __post_init__: decimals or step
        return _multiples(self.step, False, env.stats, self.label())


class Bucket(FieldRule, tag="bucket"):
    """Floor to a multiple of ``step``, or label the range between ``edges`` ("10-50", "<10", ">=100")."""

    accepts = NUMBER
    step: float | None = None
    edges: list[float] | None = None

    def __post_init__(self) -> None:
        if (self.step is None) == (self.edges is None):
            raise ValueError("set exactly one of step or edges")
        if self.step is not None and not self.step > 0:
            raise ValueError("step must be > 0")
        if self.edges is not None and (not self.edges or self.edges != sorted(set(self.edges))):
            raise ValueError("edges must be a non-empty, strictly increasing list")

    def build(self, env: BuildEnv) -> Compiled:
        if self.step is not None:
            return _multiples(self.step, True, env.stats, self.label())
        edges = self.edges
        assert edges is not None  # __post_init__: step or edges
        fmt = [_fmt(e) for e in edges]
        labels = [f"<{fmt[0]}"] + [f"{a}-{b}" for a, b in pairwise(fmt)] + [f">={fmt[-1]}"]

        def label_range(v: int | float) -> Any:
            if v.__class__ is float and not math.isfinite(v):  # ints compare exactly, however large
                return UNSET
            i = 0
            while i < len(edges) and v >= edges[i]:
                i += 1
            return labels[i]

        return Compiled(label_range)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
MINUTE_CACHE = 1024  # per bucket_time rule: recent minutes' bucket texts
SECONDS = frozenset(f":{s:02d}" for s in range(60))
UTC_SECONDS = frozenset(f":{s:02d}Z" for s in range(60))  # how a UTC text of whole seconds ends


class BucketTime(FieldRule, tag="bucket_time"):
    """Floor a timestamp (ISO 8601 string, or epoch seconds/milliseconds) to ``to`` or ``seconds``.

    The output keeps the input's form: an ISO string comes back as an ISO
    string in UTC (``2026-11-23T10:00:00Z``), epoch numbers stay numbers.
    """

    accepts = str | NUMBER
    to: Literal["minute", "hour", "day", "month"] | None = None
    seconds: int | None = None

    def __post_init__(self) -> None:
        if (self.to is None) == (self.seconds is None):
            raise ValueError("set exactly one of to or seconds")
        if self.seconds is not None and not 1 <= self.seconds <= 31 * 86400:
            raise ValueError("seconds must be between 1 and 2678400")

    def build(self, env: BuildEnv) -> Compiled:
        stats, label = env.stats, self.label()
        month = self.to == "month"
        width = self.seconds or _UNITS.get(self.to or "", 0)

        def floor_ts(t: float) -> float:
            if month:
                d = datetime.fromtimestamp(t, UTC)
                return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
            return t - t % width

        # The last bucket's text: consecutive messages mostly fall in one bucket, so the
        # strftime runs once per bucket, not per message. One (bucket, text) tuple, swapped whole.
        last: tuple[float, str] = (math.nan, "")
        # With whole-minute buckets, a "YYYY-MM-DDTHH:MM:SSZ" (or "...:SS+05:30") text's bucket is
        # its minute's: recent minutes' answers, keyed by the text without its seconds, skip the parse.
        minutes: BoundedCache[str, str] | None = BoundedCache(MINUTE_CACHE) if month or width % 60 == 0 else None

        def bucket_time(v: str | int | float) -> Any:
            nonlocal last
            try:
                if isinstance(v, str):
                    key = None
                    if minutes is None:
                        pass
                    elif len(v) == 20 and v[16:] in UTC_SECONDS:  # YYYY-MM-DDTHH:MM:SSZ
                        key = v[:16]
                    elif len(v) == 25 and v[16:19] in SECONDS and v[19] in "+-" and v[22] == ":":  # ...:SS+05:30
                        key = v[:16] + v[19:]
                    if key is not None and (text := minutes.get(key)) is not None:  # type: ignore[union-attr]
                        return text
                    d = datetime.fromisoformat(v.strip())
                    if d.tzinfo is None:
                        d = d.replace(tzinfo=UTC)  # naive device time is taken as UTC
                    t = floor_ts(d.timestamp())
                    bucket, text = last
                    if t != bucket:
                        text = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                        last = (t, text)
                    if key is not None:  # the seconds and a whole-minute offset: the minute's bucket
                        minutes.put(key, text)  # type: ignore[union-attr]
                    return text
                if not math.isfinite(v):
                    raise ValueError
                millis = abs(v) >= 100_000_000_000  # later than 5138 AD in seconds: milliseconds
                t = floor_ts(v / 1000 if millis else v)
                out = t * 1000 if millis else t
                return int(out) if isinstance(v, int) else float(out)
            except (ValueError, OverflowError, OSError):
                stats[(label, "invalid_time")] += 1
                return UNSET

        if minutes is None:
            return Compiled(bucket_time)

        def fuse(p: str) -> tuple[str, list[str], dict[str, Any]]:  # a remembered minute without the call
            test = f"v.__class__ is str and len(v) == 20 and v[16:] in {p}seconds"
            test += f" and (r := {p}minutes.get(v[:16])) is not None"
            return test, ["v = r"], {f"{p}minutes": minutes, f"{p}seconds": UTC_SECONDS}

        return Compiled(bucket_time, per_value(fuse))
