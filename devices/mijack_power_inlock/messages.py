"""Mi-Jack Power In-Lock app events, one Struct per topic kind (field names are the pack's paths).

Every event carries the app's view of who and what it runs on (username, device name and id,
OS, model, version); the pack drops the identifiers from all of them. A password is not part of
these types: the app must never send one (the simulator adds it as an awkward case).
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["BY_KIND", "Auth", "Crash", "Error", "ErrorEvent", "Usage"]


class _S(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    pass


class _Event(_S):
    event: str
    ts: str | int | None = None  # ISO 8601 with offset, or epoch milliseconds
    username: str | None = None
    session_id: str | None = None
    device_name: str | None = None  # "Jane's Galaxy"
    device_id: str | None = None
    os_version: str | None = None  # "Android 14.1.2"
    device_model: str | None = None
    app_version: str | None = None


class Usage(_Event, kw_only=True):
    """kind ``usage``: a feature was opened (Mi-Jack Collection/Usage)."""

    feature: str | None = None


class Auth(_Event, kw_only=True):
    """kind ``auth``: sign-in and sign-out."""

    auth_token: str | None = None


class Error(_S):
    code: str | int
    message: str | None = None
    stack: str | None = None


class Crash(_Event, kw_only=True):
    """kind ``crash``: a crash report (Mi-Jack Log Data): IP, config at the time, the error."""

    user_id: int | str | None = None
    ip: str | None = None
    app_config: str | None = None  # configuration snapshot, as text
    error: Error | None = None


class ErrorEvent(_Event, kw_only=True):
    """kind ``error``: a handled error."""

    ip: str | None = None
    app_config: str | None = None
    error: Error | None = None


BY_KIND: Final[dict[str, type[msgspec.Struct]]] = {"usage": Usage, "auth": Auth, "crash": Crash, "error": ErrorEvent}
"""The Struct for each topic kind."""
