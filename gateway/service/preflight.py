"""Start-up checks: everything that can be known before connecting, for ``gateway run`` and ``gateway validate``.

A gateway that starts with an unset password variable, a missing CA file or an
unreadable key file would otherwise connect, fail, and retry for ever while
``/readyz`` looks fine. These checks run first, and a failure is an exit with a
distinct code (from BSD's sysexits.h, as systemd and supervisors expect) and one
message naming the config key and the file or variable, never a secret's value.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

from gateway.keys import KeyFileError
from gateway.pipeline import Engine
from gateway.policy.load import PolicyError
from gateway.service.config import Config, ConfigError

__all__ = [
    "EX_CONFIG", "EX_FAIL", "EX_OK", "EX_SOFTWARE", "EX_UNAVAILABLE", "EX_USAGE", "StartupError", "check_engine",
    "check_files", "check_port",
]

EX_OK = 0
EX_FAIL = 1  # a check failed (an inline policy test, a broker that `validate --connect` could not reach)
EX_USAGE = 2  # wrong command line
EX_UNAVAILABLE = 69  # a port to listen on is taken: may pass on a later try (systemd may restart)
EX_SOFTWARE = 70  # an unexpected internal error (logged as an event with its type and location)
EX_CONFIG = 78  # the configuration, a policy, a key, a secret or a TLS file cannot be used: a restart will not help


class StartupError(Exception):
    """A start-up check failed: ``key`` is the config key, ``detail`` what is wrong (never a secret)."""

    def __init__(self, key: str, detail: str, code: int = EX_CONFIG, text: str = "") -> None:
        super().__init__(text or f"{key}: {detail}")
        self.key = key
        self.detail = detail
        self.code = code


def check_files(cfg: Config) -> None:
    """Resolve both brokers' secrets, load their TLS files, read the trackers' allow-lists, check the spool folder."""
    for side, ep in (("local", cfg.local), ("cloud", cfg.cloud)):
        try:
            ep.credentials()
            ep.tls_context()
        except ConfigError as exc:
            named = re.search(r"\((\w+_env)\)", str(exc))  # "environment variable X (password_env) ..."
            key = named.group(1) if named else str(exc).split(" ", 1)[0]
            raise StartupError(f"[{side}] {key}", str(exc), text=f"[{side}] {exc}") from None
    for name, ingest, key in (("gt06", cfg.ingest.gt06, "allowed_imeis_file"),
                              ("jt808", cfg.ingest.jt808, "allowed_terminals_file")):
        if ingest.listen:
            try:
                ingest.allow_list()
            except ConfigError as exc:
                raise StartupError(f"[ingest.{name}] {key}", str(exc), text=f"[ingest.{name}] {exc}") from None
    folder = Path(cfg.spool.path).parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise StartupError("[spool] path", f"{cfg.spool.path}: cannot create or write in {existing}")


def check_engine(cfg: Config) -> Engine:
    """Load the keys and the policies and run their inline tests, as ``gateway check`` does."""
    from gateway.service.worker import PolicySetError, build_engine

    try:
        return build_engine(cfg)
    except KeyFileError as exc:
        raise StartupError("keys_file", str(exc)) from None
    except (PolicyError, PolicySetError) as exc:  # also a pack's signature (trusted_policy_keys)
        raise StartupError("policies", str(exc)) from None
    except ConfigError as exc:  # e.g. a dead_letter prefix a policy subscribes to: the message starts with the key
        raise StartupError(str(exc).split(" ", 1)[0].rstrip(":"), str(exc)) from None
    except OSError as exc:
        raise StartupError("policies", f"{exc.filename or ''}: {exc.strerror or exc.__class__.__name__}") from None


def check_port(key: str, host: str, port: int) -> None:
    """Bind ``host:port`` once and let go: taken ports fail with EX_UNAVAILABLE, naming the address."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not "taken"
            s.bind((host, port))
    except OSError as exc:
        code = EX_UNAVAILABLE if exc.errno == errno.EADDRINUSE else EX_CONFIG
        raise StartupError(key, f"{host}:{port}: {exc.strerror or exc.__class__.__name__}", code) from None
