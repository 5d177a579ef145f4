"""Decoded JT/T 808 messages as Tracksolid records, so ``rules/jimi-tracksolid.toml`` minimises them.

Jimi IoT's 4G trackers speak JT/T 808 as well as GT06; both end up as the same record on
``tracksolid/<terminal>/<kind>``, the terminal number standing where a GT06 tracker's IMEI
stands (the pack pseudonymises it whole: it is no IMEI, so no prefix is kept). A position with
alarm bits set becomes an ``alarm`` record (the first alarm kind), others ``location``.
Cells and Wi-Fi access points are carried as the pack's ``mcc``/``mnc``/``lac``/``cell_id``
(the first-listed, serving cell), ``cells`` (every cell listed) and ``wifi_aps``; the pack
decides what leaves the site (MCC/MNC only, without location consent).
"""

from __future__ import annotations

from typing import Any

from gateway.ingest import tracksolid
from gateway.ingest.jt808.codec import Position

__all__ = ["heartbeat", "login", "position"]


def position(terminal: str, p: Position) -> tuple[str, bytes]:
    fields: dict[str, Any] = {
        "time": p.time, "latitude": p.latitude, "longitude": p.longitude, "speed_kmh": p.speed_kmh,
        "course": p.course, "valid": p.valid, "acc": p.acc,
    }
    if p.satellites is not None:
        fields["satellites"] = p.satellites
    if p.mileage_km is not None:
        fields["mileage"] = int(p.mileage_km)
    if p.cells:
        cell = p.cells[0]
        fields.update(mcc=cell.mcc, mnc=cell.mnc, lac=cell.lac, cell_id=cell.cell_id)
    message: tracksolid.Message
    if p.alarms:
        message = tracksolid.Alarm(imei=terminal, alarm=p.alarms[0], **fields)
    else:
        cells = [tracksolid.Cell(mcc=c.mcc, mnc=c.mnc, lac=c.lac, cell_id=c.cell_id) for c in p.cells] or None
        message = tracksolid.Location(imei=terminal, wifi_aps=p.wifi or None, cells=cells, **fields)
    return tracksolid.topic(terminal, str(message.__struct_config__.tag)), tracksolid.encode(message)


def heartbeat(terminal: str) -> tuple[str, bytes]:
    return tracksolid.topic(terminal, "heartbeat"), tracksolid.encode(tracksolid.Heartbeat(imei=terminal))


def login(terminal: str, peer: str | None) -> tuple[str, bytes]:
    return tracksolid.topic(terminal, "login"), tracksolid.encode(tracksolid.Login(imei=terminal, login_ip=peer))
