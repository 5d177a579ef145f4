"""WiFiKit app messages, one Struct per topic kind (field names are the pack's paths).

The app sends no ``type`` field: the kind is the last topic level, and ``device_uid`` repeats the
topic's device id (the paired device's IMEI). Fields the app did not send stay ``None`` and are
omitted on encode.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["BY_KIND", "Alarm", "Crash", "Location", "Login", "Media", "MediaRef", "Status", "Usage"]


class _S(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    pass


class _App(_S):
    device_uid: str | None = None
    app_version: str | None = None  # "3.2.1.7"


class Login(_App, kw_only=True):
    """kind ``login``: an account signs in from the app or the web console (WiFiKit 1.1, 1.2)."""

    email: str | None = None
    mobile: str | int | None = None
    device_model: str | None = None
    os: str | None = None  # "Android 14.1"
    browser: str | None = None  # web console only: "Chrome 120.0.6099.144"
    login_ip: str | None = None
    network_type: str | None = None  # WIFI | 4G | 5G
    network_status: str | None = None


class Location(_App, kw_only=True):
    """kind ``location``: a GPS fix with the app's reverse-geocoded address (WiFiKit 1.4, 1.6)."""

    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    speed: float | None = None
    course: int | None = None
    gps_ts: str | None = None
    address: str | None = None


class Crash(_App, kw_only=True):
    """kind ``crash``: an app crash with its log (WiFiKit 1.2, 5)."""

    os: str | None = None
    device_model: str | None = None
    crash_log: str


class Usage(_App, kw_only=True):
    """kind ``usage``: app analytics (which screen, how long)."""

    os: str | None = None
    network_type: str | None = None
    screen: str | None = None  # not declared by the pack: removed upstream
    duration_s: int | None = None  # not declared by the pack: removed upstream


class Alarm(_App, kw_only=True):
    """kind ``alarm``: a device alarm shown in the app, with the position at the time."""

    alarm: str  # sos | low_battery | exit_fence ...
    lat: float | None = None
    lon: float | None = None
    gps_ts: str | None = None


class MediaRef(_S):
    type: str  # picture | recording | video
    ref: str
    blob: str | None = None  # base64 bytes, when the app inlines a thumbnail


class Media(_App, kw_only=True):
    """kind ``media``: a picture, recording or video taken by the device (WiFiKit 1.5)."""

    media: MediaRef


class Status(_App, kw_only=True):
    """kind ``status``: the device's network state as the app sees it."""

    device_model: str | None = None
    network_type: str | None = None
    network_status: str | None = None


BY_KIND: Final[dict[str, type[msgspec.Struct]]] = {
    "login": Login,
    "location": Location,
    "crash": Crash,
    "usage": Usage,
    "alarm": Alarm,
    "media": Media,
    "status": Status,
}
"""The Struct for each topic kind."""
