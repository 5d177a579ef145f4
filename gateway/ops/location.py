"""Location: coarsen a latitude/longitude pair.

Latitude and longitude are handled as a pair because precision is a property
of the point: a grid of N metres has to know the latitude to size its
longitude step, and a privacy zone is a circle around a point.

- ``grid_m``: snap to the centre of a cell about N metres wide. The globe is cut
  into whole cells (longitude cells per latitude band), so the antimeridian
  and the poles need no special case and a cell never straddles +-180.
- ``decimals``: round each coordinate to N decimals.
- ``consent``: a device whose consent for that purpose is on record gets
  ``consent_decimals`` (or the exact point if that is not set).
- ``zones``: a point inside one of these circles (a depot, a home) is removed,
  with or without consent.
- ``mode = "fixed"``: always report the point ``at`` (snapped to the rule's
  grid). For stationary assets such as locker cabinets: snapping noisy reports
  of one place would flip between neighbouring cells near a boundary, and
  many such reports average out to the true point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from gateway.ops.base import BoundedCache, BuildEnv, Compiled, Inline, Rule

M_PER_DEG = 111_320.0  # metres per degree of latitude (and of longitude at the equator)
EARTH_RADIUS_M = 6_371_008.8

SnapForm = Callable[[str], "tuple[list[str], dict[str, Any]]"]  # prefix -> (lines, names) setting ``pt``


class Zone(msgspec.Struct, forbid_unknown_fields=True):
    lat: float
    lon: float
    radius_m: float


class CoarsenLocation(Rule, tag="coarsen_location"):
    """Coarsen the point at paths ``lat`` and ``lon`` (siblings in one object)."""

    lat: str
    lon: str
    grid_m: float | None = None
    decimals: int | None = None
    mode: Literal["grid", "fixed"] = "grid"
    at: tuple[float, float] | None = None
    consent: str | None = None
    consent_decimals: int | None = None
    zones: list[Zone] = []

    def __post_init__(self) -> None:
        if (self.grid_m is None) == (self.decimals is None):
            raise ValueError("set exactly one of grid_m or decimals")
        if self.grid_m is not None and not 1 <= self.grid_m <= 20_000_000:
            raise ValueError("grid_m must be between 1 and 20000000 metres")
        if self.decimals is not None and not 0 <= self.decimals <= 6:
            raise ValueError("decimals must be between 0 and 6")
        if self.consent_decimals is not None and not 0 <= self.consent_decimals <= 8:
            raise ValueError("consent_decimals must be between 0 and 8")
        if self.consent_decimals is not None and self.consent is None:
            raise ValueError("consent_decimals needs consent (the purpose to look up)")
        if self.mode == "fixed":
            if self.at is None:
                raise ValueError('mode = "fixed" needs at = [lat, lon]')
            if self.consent is not None:
                raise ValueError('mode = "fixed" reports one point; consent does not apply')
            if not valid(*self.at):
                raise ValueError("at must be a valid [lat, lon]")
        elif self.at is not None:
            raise ValueError('at is only used with mode = "fixed"')
        for zone in self.zones:
            if not valid(zone.lat, zone.lon) or zone.radius_m <= 0:
                raise ValueError("a zone needs a valid lat, lon and radius_m > 0")

    def label(self) -> str:
        return self.name or f"{self.lat},{self.lon}"

    @property
    def max_decimals(self) -> int:
        """The finest precision this rule emits without consent (used by the leak guard)."""
        if self.decimals is not None:
            return self.decimals
        assert self.grid_m is not None  # __post_init__: decimals or grid_m
        return _repr_decimals(self.grid_m / M_PER_DEG)

    def build(self, env: BuildEnv) -> Compiled:
        """``call(lat, lon, consented) -> (lat, lon) | None`` (None: remove the point)."""
        assert self.decimals is not None or self.grid_m is not None  # __post_init__
        snap, snap_inline = (
            (_rounder(self.decimals), None) if self.decimals is not None else _grid(self.grid_m)  # type: ignore[arg-type]
        )
        precise = _rounder(self.consent_decimals) if self.consent_decimals is not None else None
        zones = [(math.radians(z.lat), math.radians(z.lon), z.radius_m) for z in self.zones]
        stats, label = env.stats, self.label()
        fixed = snap(*self.at) if self.at is not None else None  # set exactly for mode = "fixed"

        def coarsen_location(lat: float, lon: float, consented: bool) -> tuple[float, float] | None:
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # False for NaN too
                stats[(label, "invalid_location")] += 1
                return None
            if zones and _in_zone(lat, lon, zones):
                stats[(label, "in_privacy_zone")] += 1
                return None
            if fixed is not None:
                return fixed
            if consented:
                return precise(lat, lon) if precise else (lat, lon)
            return snap(lat, lon)

        def inline(p: str, consented: str) -> Inline | None:
            """The common case inline (see gateway.ops.base.Inline), over the float locals ``la``
            and ``lo``: when ``test`` holds (a valid point, no consent, no zones), ``lines``
            set ``pt`` to the snapped point; anything else is the call. ``consented`` is the
            expression for the call's third argument."""
            if zones or fixed is not None or snap_inline is None:
                return None
            lines, names = snap_inline(p)
            test = "-90.0 <= la <= 90.0 and -180.0 <= lo < 180.0" + (
                "" if consented == "False" else f" and not ({consented})"
            )
            return Inline(test, lines, names)

        return Compiled(coarsen_location, inline)


def valid(lat: float, lon: float) -> bool:
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0  # False for NaN too


def _repr_decimals(step_deg: float) -> int:
    """Decimals enough to tell cell centres apart (one more than the step needs)."""
    return min(7, max(0, math.ceil(-math.log10(step_deg)) + 1))


def _rounder(decimals: int) -> Callable[[float, float], tuple[float, float]]:
    scale = 10**decimals

    def round_point(lat: float, lon: float) -> tuple[float, float]:
        # floor(x * scale + 0.5) / scale: half up, and a short repr ("12.97"), without
        # round(x, n), which converts through decimal strings and costs ~10x more.
        return math.floor(lat * scale + 0.5) / scale, math.floor(lon * scale + 0.5) / scale

    return round_point


def _grid(grid_m: float) -> tuple[Callable[[float, float], tuple[float, float]], SnapForm]:
    """``(snap, snap_inline)``: the grid snap and its inline form."""
    n_lat = max(1, math.floor(180.0 / (grid_m / M_PER_DEG)))
    step_lat = 180.0 / n_lat
    digits = _repr_decimals(step_lat)
    # Per latitude band: its longitude cell count and width; per cell: its centre.
    # A fleet visits few cells, so both are cached (bounded: at 1 m there are 2e7 bands).
    # Cell indices are whole floats, q // 1.0 (the exact floor for q >= 0, and 2x cheaper
    # than int(q) here); a cell's key is i * 2**26 + j (j < 40,075,200 cells round the
    # equator at 1 m < 2**26; the key stays below 2**51, so it is exact).
    bands: BoundedCache[float, tuple[int, float]] = BoundedCache(65536)
    centres: BoundedCache[float, tuple[float, float]] = BoundedCache(65536)
    top = n_lat - 1.0

    def band(i: float) -> tuple[int, float]:
        centre = -90.0 + (i + 0.5) * step_lat
        width = grid_m / (M_PER_DEG * max(math.cos(math.radians(centre)), 1e-12))
        n_lon = max(1, math.floor(360.0 / width))
        return bands.put(i, (n_lon, 360.0 / n_lon))

    def centre(i: float, j: float, b: tuple[int, float]) -> tuple[float, float]:
        return centres.put(i * 67108864.0 + j, (
            round(-90.0 + (i + 0.5) * step_lat, digits) + 0.0,
            round(-180.0 + (j + 0.5) * b[1], digits) + 0.0,
        ))  # fmt: skip

    def snap(lat: float, lon: float) -> tuple[float, float]:
        if lon >= 180.0:  # +180 is -180; dividing 360 by the step may fall a hair short of n_lon
            lon -= 360.0
        i = (lat + 90.0) / step_lat // 1.0
        if i >= n_lat:  # lat = 90
            i = top
        b = bands.get(i) or band(i)
        j = (lon + 180.0) / b[1] // 1.0 % b[0]
        return centres.get(i * 67108864.0 + j) or centre(i, j, b)

    def fuse(p: str) -> tuple[list[str], dict[str, Any]]:
        """``snap`` inline: ``pt`` from the locals ``la``, ``lo`` (valid, and ``lo < 180``)."""
        lines = [
            f"i = (la + 90.0) / {step_lat!r} // 1.0",
            f"if i >= {n_lat}:",
            f"    i = {top!r}",
            f"b = {p}bands.get(i) or {p}band(i)",
            "j = (lo + 180.0) / b[1] // 1.0 % b[0]",
            f"pt = {p}centres.get(i * 67108864.0 + j) or {p}centre(i, j, b)",
        ]
        return lines, {f"{p}bands": bands, f"{p}band": band, f"{p}centres": centres, f"{p}centre": centre}

    return snap, fuse


def _in_zone(lat: float, lon: float, zones: list[tuple[float, float, float]]) -> bool:
    phi, lam = math.radians(lat), math.radians(lon)
    for zphi, zlam, radius in zones:
        # haversine distance
        a = math.sin((phi - zphi) / 2) ** 2 + math.cos(phi) * math.cos(zphi) * math.sin((lam - zlam) / 2) ** 2
        if 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a))) <= radius:
            return True
    return False
