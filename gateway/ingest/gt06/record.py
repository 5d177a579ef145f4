"""Decoded GT06 frames as Tracksolid records: the topic and JSON the ``jimi-tracksolid`` pack expects."""

from __future__ import annotations

from typing import Any

from gateway.ingest import tracksolid
from gateway.ingest.gt06.codec import Frame

__all__ = ["to_message"]

_MESSAGE_TYPES: dict[str, type[tracksolid.Message]] = {
    "location": tracksolid.Location,
    "heartbeat": tracksolid.Heartbeat,
    "alarm": tracksolid.Alarm,
    "login": tracksolid.Login,
}
# Frame fields each message carries: everything the two share except the IMEI, which for all
# but the login comes from the connection. Protocol, serial, type id and upload mode stay
# behind: they describe the link, not the tracker's state, and the pack does not name them.
_SHARED = {
    kind: tuple(
        name for name in cls.__struct_fields__ if name in Frame.__struct_fields__ and name != "imei"
    )
    for kind, cls in _MESSAGE_TYPES.items()
}


def to_message(frame: Frame, imei: str, login_ip: str | None = None) -> tuple[str, bytes] | None:
    """``(topic, JSON payload)`` of the Tracksolid profile for a decoded frame; None if it has none.

    ``login_ip`` (the peer address) goes into the login message only, where the Tracksolid
    profile records it and the pack truncates it.
    """
    cls = _MESSAGE_TYPES.get(frame.type)
    if cls is None:
        return None
    fields: dict[str, Any] = {}
    for name in _SHARED[frame.type]:
        value = getattr(frame, name)
        if value is not None:
            fields[name] = value
    if cls is tracksolid.Login and login_ip is not None:
        fields["login_ip"] = login_ip
    return tracksolid.topic(imei, frame.type), tracksolid.encode(cls(imei=imei, **fields))
