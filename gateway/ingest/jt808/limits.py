"""JT/T 808 listener limits: a small module, so the service config can validate them cheaply."""

from __future__ import annotations

import msgspec

__all__ = ["Limits"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-listener limits (the same meaning as GT06's; see docs/configuration.md)."""

    max_connections: int = 10_000
    max_connections_per_peer: int = 2048
    max_buffer: int = 4096  # bytes of one escaped frame, and read size
    idle_timeout: float = 600.0
    login_timeout: float = 30.0  # connect -> registered or authenticated
    max_frames_per_second: float = 20.0
    frame_burst: int = 100
    max_bad_frames: int = 32
    max_subpackages: int = 64  # parts of one split message held at once
    allowed_terminals: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_peer, self.frame_burst, self.max_subpackages) < 1:
            raise ValueError("max_connections, max_connections_per_peer, frame_burst, max_subpackages must be >= 1")
        if self.max_bad_frames < 0:
            raise ValueError("max_bad_frames must be >= 0")
        if self.max_buffer < 64:
            raise ValueError("max_buffer must be at least 64 bytes")
        if min(self.idle_timeout, self.login_timeout, self.max_frames_per_second) <= 0:
            raise ValueError("timeouts and max_frames_per_second must be positive")
