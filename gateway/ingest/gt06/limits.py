"""GT06 listener limits: a small module, so the service config can validate them cheaply."""

from __future__ import annotations

import msgspec

__all__ = ["Limits"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-listener limits; the defaults suit a real fleet, so ``Limits()`` is safe to deploy.

    - ``max_connections``: a tracker holds one connection all day, so this is the fleet size
      one process serves; the process also needs as many open files (checked at start).
    - ``max_connections_per_peer``: connections from one IP address, so one host cannot take
      every slot. Trackers behind a carrier's NAT or a private APN share addresses, hence the
      generous default: size it for the largest group that reaches the gateway through one address.
    - ``max_buffer``: bytes held per connection, and the largest frame accepted. Real frames
      are under 300 bytes (login 18-22, position 36-40, Wi-Fi/LBS lists a few hundred).
    - ``idle_timeout``: seconds without a valid frame after login (stray bytes do not count,
      so a connection that trickles garbage is closed too). Trackers send a heartbeat every
      3-5 minutes by default; 600 s drops a dead connection after about two missed ones.
    - ``login_timeout``: seconds from connect to an accepted login. A tracker logs in as soon
      as its TCP connection is up; this also ends connections that send nothing at all.
    - ``max_frames_per_second`` / ``frame_burst``: a token bucket per connection. A tracker
      sends at most about one fix a second, but uploads the fixes it stored while offline
      in a burst after reconnecting, hence the burst. Over the rate the connection is not
      closed: reading pauses, so TCP slows the tracker down and nothing is lost.
    - ``max_bad_frames``: framing/CRC/content errors tolerated per connection before it is
      closed (a line-noise bit flip is rare; a stream of them is not a tracker).
    - ``allowed_imeis``: if set, logins from other IMEIs are refused without an ACK. GT06 has
      no other authentication: without a list, anyone who can reach the port can log in.
    - ``accept_bad_crc``: pass frames whose CRC is wrong (length and stop bytes still checked)
      for tracker models known to miscompute it; counted as ``bad_crc_accepted``. Off by default.
    """

    max_connections: int = 10_000
    max_connections_per_peer: int = 2048
    max_buffer: int = 4096
    idle_timeout: float = 600.0
    login_timeout: float = 30.0
    max_frames_per_second: float = 20.0
    frame_burst: int = 100
    max_bad_frames: int = 32
    allowed_imeis: frozenset[str] | None = None
    accept_bad_crc: bool = False

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_peer, self.frame_burst) < 1:
            raise ValueError("max_connections, max_connections_per_peer and frame_burst must be at least 1")
        if self.max_bad_frames < 0:
            raise ValueError("max_bad_frames must be >= 0")
        if self.max_buffer < 64:  # room for any login or position frame
            raise ValueError("max_buffer must be at least 64 bytes")
        if min(self.idle_timeout, self.login_timeout, self.max_frames_per_second) <= 0:
            raise ValueError("timeouts and max_frames_per_second must be positive")
