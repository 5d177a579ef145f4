"""What a tracker TCP listener needs whatever the protocol: connection slots per listener and per
peer, a token bucket per connection, the open-file limit, and a stop that ends every connection.

A protocol's listener subclasses ``Listener`` and implements ``serve_connection``; it raises
``Closed(reason)`` to end a connection and count ``reason`` in its counters (a msgspec Struct
of ints with ``connections``, ``open_connections``, ``over_limit`` and ``peer_limited``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from typing import Any

from gateway.telemetry import get_logger

__all__ = ["FILES_RESERVED", "Closed", "FileLimitError", "Listener", "TokenBucket", "ensure_file_limit", "peer_ip",
           "stop"]

log = get_logger("ingest")
FILES_RESERVED = 256  # brokers, spool, metrics, logs, policy reloads: files the rest of the process needs


class Closed(Exception):
    """Ends a connection; ``reason`` is the counter to raise (or "" for none)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class FileLimitError(OSError):
    """``max_connections`` does not fit the process's open-file limit (RLIMIT_NOFILE)."""


def ensure_file_limit(max_connections: int, name: str) -> int:
    """Make room for ``max_connections`` sockets: raise the soft open-file limit up to the hard one.

    Without this, connection number ~1000 fails in ``accept`` with EMFILE, which asyncio logs
    and retries, while the broker and spool of the same process start failing too. Returns the
    soft limit now in force; raises ``FileLimitError`` if even the hard limit is too low.
    """
    needed = max_connections + FILES_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard == resource.RLIM_INFINITY or hard >= needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            return needed
        raise FileLimitError(
            f"{name} max_connections {max_connections} needs {needed} open files but the process may open "
            f"at most {hard}: raise the limit (ulimit -n, systemd LimitNOFILE=) or lower max_connections"
        )
    return soft


def peer_ip(writer: asyncio.StreamWriter) -> str | None:
    """The peer's address (an IPv4-mapped IPv6 address as IPv4); never logged."""
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class TokenBucket:
    """A frame budget: ``rate`` per second, ``burst`` at once. Waiting (not reading) lets TCP push back."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.loop = asyncio.get_running_loop()
        self.refilled = self.loop.time()

    def take(self) -> bool:
        now = self.loop.time()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def wait(self) -> None:
        await asyncio.sleep((1 - self.tokens) / self.rate)
        self.tokens, self.refilled = 0.0, self.loop.time()


class Listener:
    """Connection slots and bookkeeping shared by a listener's connections."""

    def __init__(self, name: str, max_connections: int, max_per_peer: int, counters: Any) -> None:
        self.name = name
        self.max_connections, self.max_per_peer = max_connections, max_per_peer
        self.counters = counters
        self.open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.per_peer: dict[str | None, int] = {}

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               peer: str | None) -> None:
        raise NotImplementedError

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counters = self.counters
        if counters.open_connections >= self.max_connections:
            counters.over_limit += 1
            writer.transport.abort()
            return
        peer = peer_ip(writer)
        from_peer = self.per_peer.get(peer, 0)
        if from_peer >= self.max_per_peer:
            counters.peer_limited += 1
            writer.transport.abort()
            return
        self.per_peer[peer] = from_peer + 1
        counters.connections += 1
        counters.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            await self.serve_connection(reader, writer, peer)
        except Closed as closed:
            if closed.reason:
                setattr(counters, closed.reason, getattr(counters, closed.reason) + 1)
                log.debug(f"{self.name} connection closed", reason=closed.reason)
        except (ConnectionError, TimeoutError):
            pass  # reset by the device, or answers it never read
        except asyncio.CancelledError:
            pass  # ``stop``: ending normally spares asyncio's stream callback a cancelled task
        except Exception as exc:  # a bug must cost one connection, not the listener
            log.error(f"{self.name} connection failed", error=type(exc).__name__)
        finally:
            counters.open_connections -= 1
            del self.open[task]
            left = self.per_peer.pop(peer) - 1
            if left:
                self.per_peer[peer] = left
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a peer that does not read must not hold the socket
            else:
                writer.close()  # graceful: the answers already written still reach the device


def update_limits(listener: Any, limits: Any) -> None:
    """A reload (e.g. a new allow-list): connections accepted from now on use ``limits``
    (a listener's config Struct, with ``max_connections`` and ``max_connections_per_peer``)."""
    if listener is not None:
        listener.limits = limits
        listener.max_connections, listener.max_per_peer = limits.max_connections, limits.max_connections_per_peer


async def stop(server: asyncio.Server, listener: Any, grace: float = 5.0) -> None:
    """Stop accepting, then end every open connection of ``listener`` (anything with ``open``: task ->
    writer), cancelling one still stuck in its handler after ``grace`` seconds."""
    server.close()
    if listener is not None and listener.open:
        tasks = list(listener.open)
        for writer in listener.open.values():
            writer.transport.abort()
        _, busy = await asyncio.wait(tasks, timeout=grace)
        for task in busy:
            task.cancel()
        if busy:
            await asyncio.wait(busy, timeout=grace)
    await server.wait_closed()
