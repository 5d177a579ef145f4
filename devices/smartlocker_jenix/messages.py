"""SmartLocker cabinet messages, one Struct per topic kind (field names are the pack's paths).

Cabinets send no ``type`` field: the kind is the last topic level. Fields a cabinet did not send
stay ``None`` and are omitted on encode. Credentials that must never leave the site (a keypad
PIN, a UPI PIN, a password) are not part of these types: a cabinet that sends them is
misbehaving, and the simulator adds them to raw payloads as awkward cases.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "BY_KIND",
    "Access",
    "AccessEvent",
    "App",
    "Diagnostics",
    "Error",
    "Fix",
    "LockEvent",
    "Operator",
    "Payment",
    "PaymentEvent",
]


class _S(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    pass


class Operator(_S):
    """The site operator or agent who handled the event (SmartLocker 1.1)."""

    id: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None


class Access(_S):
    """How a door was opened: ``mode`` card | qr | app | api | pin | face, and the credential used."""

    mode: str
    credential: str | None = None  # card UID, QR token, PIN or face template, depending on mode


class App(_S):
    """The customer's phone app, in app mode (SmartLocker 1.4)."""

    permissions: list[str] | None = None
    os: str | None = None  # "Android 14"
    ble_mac: str | None = None


class Payment(_S):
    """A UPI payment for a locker rental (SmartLocker 1.3)."""

    upi_ref: str | int  # 12-digit UTR
    payer_vpa: str | None = None  # name@handle
    amount: float | None = None  # INR
    status: str | None = None  # success | failed | pending | refunded


class Error(_S):
    code: str
    message: str | None = None


class Fix(_S):
    """A GPS fix from the cabinet's modem."""

    lat: float
    lon: float


class _Cabinet(_S):
    cabinet_id: str
    board_id: str | None = None
    locker_id: str | int | None = None  # door number: 12 or "A07"
    ts: str | int | None = None  # ISO 8601 UTC, or epoch milliseconds on older firmware


class LockEvent(_Cabinet, kw_only=True):
    """kind ``event``: a door or lock changed state."""

    event: str  # opened | closed | deposit | pickup | tamper | door_left_open
    status: str | None = None
    operator: Operator | None = None


class AccessEvent(_Cabinet, kw_only=True):
    """kind ``access``: who opened a door and how."""

    access: Access
    user_id: str | None = None
    app: App | None = None


class PaymentEvent(_Cabinet, kw_only=True):
    """kind ``payment``: a UPI payment attempt."""

    payment: Payment
    user_id: str | None = None
    note: str | None = None  # free text typed by the agent


class Diagnostics(_Cabinet, kw_only=True):
    """kind ``diagnostics``: firmware, signal, errors."""

    firmware: str | None = None
    rssi: int | None = None
    status: str | None = None
    error: Error | None = None
    location: Fix | None = None


BY_KIND: Final[dict[str, type[msgspec.Struct]]] = {
    "event": LockEvent,
    "access": AccessEvent,
    "payment": PaymentEvent,
    "diagnostics": Diagnostics,
}
"""The Struct for each topic kind."""
