"""``config.toml`` for ``gateway run``: one flat, documented struct per section.

Decoded straight into msgspec Structs, so an unknown key or a wrong type is an
error naming the key, never a silently ignored setting. Secrets (broker
passwords, the key file) are never in this file: it names an environment
variable or a file that holds them, so the config can be reviewed and versioned
while the secrets stay where the operator keeps them. See docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.ingest.gt06.limits import Limits
from gateway.ingest.jt808.limits import Limits as Jt808Limits
from gateway.service.consent import ConsentKeyError, public_key

__all__ = ["Config", "ConfigError", "Endpoint", "load_config"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key (never a secret)."""


class Endpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One broker connection (``[local]`` or ``[cloud]``)."""

    url: str  # mqtt://host:port or mqtts://host:port; no credentials in the URL
    client_id: str = "telemetry-gateway"
    username: str = ""
    username_env: str = ""
    password_env: str = ""  # name of an environment variable holding the password
    password_file: str = ""  # or a file holding it (first line)
    ca_file: str = ""  # CA bundle for mqtts:// (default: the system's)
    cert_file: str = ""  # client certificate for mutual TLS
    key_file: str = ""
    allow_insecure: bool = False  # permit plaintext mqtt:// to a non-loopback host
    keepalive_s: int = 30
    session_expiry_s: int = 86400  # local side: how long the broker keeps our queue while we are away
    max_inflight: int = 1000  # unacknowledged QoS 1 messages in flight on this connection

    def __post_init__(self) -> None:
        # No message here quotes the url: a url that breaks a rule may hold a secret.
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("url must start with mqtt:// or mqtts://")
        if "@" in self.url or parts.username is not None or parts.password is not None:
            raise ValueError("url must not carry credentials: use username/password_env/password_file")
        if "?" in self.url or "#" in self.url or parts.query or parts.fragment:
            raise ValueError(
                "url must not have a query or fragment (credentials go in username/password_env/password_file)"
            )
        if not parts.hostname:
            raise ValueError("url has no host")
        if parts.path not in ("", "/"):
            raise ValueError("url must not have a path")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
        except ValueError:
            raise ValueError("url has an invalid port") from None
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if (self.cert_file or self.ca_file) and parts.scheme != "mqtts":
            raise ValueError("ca_file/cert_file need an mqtts:// url")
        if not 5 <= self.keepalive_s <= 3600:
            raise ValueError("keepalive_s must be between 5 and 3600")
        if not 0 <= self.session_expiry_s <= 4294967295:
            raise ValueError("session_expiry_s must be between 0 and 4294967295")
        if not 1 <= self.max_inflight <= 65535:
            raise ValueError("max_inflight must be between 1 and 65535")
        if not self.client_id or len(self.client_id) > 64:
            raise ValueError("client_id must be 1-64 characters")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"  # urlsplit lower-cases the scheme: "MQTTS://" is TLS too

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) from the environment or files, read when connecting.

        Read per connection attempt, so a rotated password file is picked up on
        the next reconnect without a restart. A ConfigError names the key and the
        variable or file, never the secret.
        """
        password: str | None = None
        if self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(f"environment variable {self.password_env} (password_env) is not set")
        elif self.password_file:
            try:
                text = Path(self.password_file).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"password_file {self.password_file}: {_why(exc)}") from None
            password = text.splitlines()[0] if text else ""
            if not password:
                raise ConfigError(f"password_file {self.password_file}: the first line is empty")
        user = self.username
        if self.username_env:
            user = os.environ.get(self.username_env, "")
            if not user:
                raise ConfigError(f"environment variable {self.username_env} (username_env) is not set")
        return (user or None), password

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for mqtts:// (CA bundle, client certificate); None for mqtt://."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ca_file {self.ca_file}: {_why(exc)}") from None
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"cert_file {self.cert_file} / key_file {self.key_file}: {_why(exc)}") from None
        return ctx


def _no_passphrase() -> str:
    """A passphrase-protected key cannot be used unattended: refuse rather than prompt on a TTY."""
    raise ValueError("the key is protected by a passphrase; the gateway needs an unencrypted key (mode 0600)")


def _why(exc: BaseException) -> str:
    """What went wrong with a file, without its contents: the OS error or OpenSSL's reason."""
    if isinstance(exc, ssl.SSLError):
        text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[1]) if len(exc.args) > 1 else str(exc))
        return f"cannot load: {'not valid PEM' if 'PEM lib' in text else 'OpenSSL says'} ({text})"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    if isinstance(exc, UnicodeDecodeError):
        return "not text (UTF-8)"
    return str(exc) if isinstance(exc, ValueError) else exc.__class__.__name__


class Spool(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: str = "spool.db"
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < 1024 * 1024:
            raise ValueError("max_bytes must be at least 1 MiB (one policy's largest message must fit)")


class Metrics(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:9108"  # "" turns the HTTP endpoint off

    def address(self) -> tuple[str, int] | None:
        """Host and port of /metrics (with --workers N, the supervisor's; it merges the workers' pages)."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    def __post_init__(self) -> None:
        if self.listen:
            _host, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError('listen must be "host:port"')


class Log(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal, else JSON lines


class Consent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Signed consent records on the local broker (see gateway/service/consent.py)."""

    topic: str = "consent/{device}/{purpose}"  # retained records; "" turns consent tracking off
    public_keys: list[str] = msgspec.field(default_factory=list)  # base64 Ed25519 keys of the consent issuer(s)
    public_keys_file: str = ""  # or a file of them, one per line
    max_entries: int = 100_000  # grants held at once; more are refused (counted "full"), revocations always apply
    max_clock_skew_s: int = 300  # a record issued further in the future than this is refused

    def __post_init__(self) -> None:
        if self.topic and ("{device}" not in self.topic or "{purpose}" not in self.topic):
            raise ValueError("topic must contain {device} and {purpose} levels")
        if not 1 <= self.max_entries <= 10_000_000:
            raise ValueError("max_entries must be between 1 and 10000000")
        if not 0 <= self.max_clock_skew_s <= 86400:
            raise ValueError("max_clock_skew_s must be between 0 and 86400")

    def verify_keys(self) -> list[Ed25519PublicKey]:
        """The issuers' public keys; a ConfigError names the key that is wrong."""
        texts = [("consent.public_keys", t) for t in self.public_keys]
        if self.public_keys_file:
            try:
                lines = Path(self.public_keys_file).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"consent.public_keys_file {self.public_keys_file}: {exc.strerror}") from None
            texts += [("consent.public_keys_file", x) for x in lines if x.strip() and not x.startswith("#")]
        keys = []
        for n, (where, text) in enumerate(texts):
            try:
                keys.append(public_key(text))
            except ConsentKeyError as exc:
                raise ConfigError(f"{where}: entry {n + 1}: {exc}") from None
        return keys


class Reconnect(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    min_s: float = 0.5
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s <= 3600:
            raise ValueError("need 0 < min_s <= max_s <= 3600")


_LIMITS = Limits()  # the listener's own defaults, documented (and reasoned) there


class _TrackerListener(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the GT06 and JT/T 808 listeners share: the address and the per-connection limits."""

    listen: str = ""  # e.g. "0.0.0.0:5023"; "" = off
    max_connections: int = _LIMITS.max_connections
    max_connections_per_peer: int = _LIMITS.max_connections_per_peer
    max_buffer: int = _LIMITS.max_buffer
    idle_timeout_s: float = _LIMITS.idle_timeout
    login_timeout_s: float = _LIMITS.login_timeout
    max_frames_per_second: float = _LIMITS.max_frames_per_second
    frame_burst: int = _LIMITS.frame_burst
    max_bad_frames: int = _LIMITS.max_bad_frames

    def _check_listen(self) -> None:
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError('listen must be "host:port"')

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def _common(self) -> dict[str, Any]:
        return {
            "max_connections": self.max_connections, "max_connections_per_peer": self.max_connections_per_peer,
            "max_buffer": self.max_buffer, "idle_timeout": self.idle_timeout_s, "login_timeout": self.login_timeout_s,
            "max_frames_per_second": self.max_frames_per_second, "frame_burst": self.frame_burst,
            "max_bad_frames": self.max_bad_frames,
        }


def _allow_list(ids: list[str] | None, file: str, key: str) -> frozenset[str] | None:
    """An allow-list from the config or from ``file`` (one id per line, # comments); read at each call."""
    if file:
        try:
            lines = Path(file).read_text().split()
        except OSError as exc:
            raise ConfigError(f"{key}_file {file}: {exc.strerror}") from None
        return frozenset(x for x in lines if not x.startswith("#"))
    return frozenset(ids) if ids is not None else None


class Gt06(_TrackerListener, kw_only=True, forbid_unknown_fields=True):
    """Native TCP ingress for Jimi/Concox GT06 trackers (see gateway/ingest/gt06/listener.py)."""

    allowed_imeis: list[str] | None = None  # None: any device that logs in
    allowed_imeis_file: str = ""  # or one IMEI per line
    accept_bad_crc: bool = _LIMITS.accept_bad_crc  # for tracker models that miscompute the CRC

    def __post_init__(self) -> None:
        self._check_listen()
        if self.allowed_imeis is not None and self.allowed_imeis_file:
            raise ValueError("set allowed_imeis or allowed_imeis_file, not both")
        self._limits(None)  # out-of-range limits are a config error, not a failure at start

    def limits(self) -> Limits:
        return self._limits(self.allow_list())

    def _limits(self, allowed: frozenset[str] | None) -> Limits:
        return Limits(**self._common(), allowed_imeis=allowed, accept_bad_crc=self.accept_bad_crc)

    def allow_list(self) -> frozenset[str] | None:
        """The IMEI allow-list (a file is read when the listener starts and on SIGHUP)."""
        return _allow_list(self.allowed_imeis, self.allowed_imeis_file, "allowed_imeis")


_JT808 = Jt808Limits()


class Jt808(_TrackerListener, kw_only=True, forbid_unknown_fields=True):
    """Native TCP ingress for JT/T 808 terminals (see gateway/ingest/jt808/listener.py)."""

    max_subpackages: int = _JT808.max_subpackages
    allowed_terminals: list[str] | None = None  # None: any terminal that registers
    allowed_terminals_file: str = ""  # or one terminal number per line

    def __post_init__(self) -> None:
        self._check_listen()
        if self.allowed_terminals is not None and self.allowed_terminals_file:
            raise ValueError("set allowed_terminals or allowed_terminals_file, not both")
        self._limits(None)

    def limits(self) -> Jt808Limits:
        return self._limits(self.allow_list())

    def _limits(self, allowed: frozenset[str] | None) -> Jt808Limits:
        return Jt808Limits(**self._common(), max_subpackages=self.max_subpackages, allowed_terminals=allowed)

    def allow_list(self) -> frozenset[str] | None:
        """The terminal allow-list (a file is read when the listener starts and on SIGHUP)."""
        return _allow_list(self.allowed_terminals, self.allowed_terminals_file, "allowed_terminals")


class Supervisor(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``gateway run --workers N``: how a worker that dies is restarted (see docs/operations.md)."""

    restart_min_s: float = 0.5  # first restart delay; doubles with each quick failure
    restart_max_s: float = 30.0
    healthy_after_s: float = 60.0  # a worker that ran this long before exiting restarts from restart_min_s again

    def __post_init__(self) -> None:
        if not 0 < self.restart_min_s <= self.restart_max_s <= 3600:
            raise ValueError("need 0 < restart_min_s <= restart_max_s <= 3600")
        if not 0 < self.healthy_after_s <= 86400:
            raise ValueError("healthy_after_s must be between 0 and 86400")


class Ingest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    gt06: Gt06 = msgspec.field(default_factory=Gt06)
    jt808: Jt808 = msgspec.field(default_factory=Jt808)


class Keys(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Key rotation without a flag day."""

    transition_s: float = 0.0  # after `keygen --rotate`: also send each device's previous-key pseudonym this long

    def __post_init__(self) -> None:
        if self.transition_s < 0:
            raise ValueError("keys.transition_s must be >= 0")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    local: Endpoint
    cloud: Endpoint
    policies: list[str]
    trusted_policy_keys: list[str] = []  # signers' Ed25519 public keys: when set, every pack needs a valid .sig
    shadow_policies: list[str] = []  # candidate packs run beside the active ones; forward nothing, count differences
    keys_file: str = ""  # default: $GATEWAY_KEYS_FILE or $GATEWAY_KEYS
    group: str = ""  # shared-subscription group: "" = plain subscriptions (one gateway per site)
    dead_letter: str = ""  # local topic prefix for sealed dead letters ("" = off)
    shutdown_timeout_s: float = 10.0  # SIGTERM: wait this long for cloud acks, then spool
    spool: Spool = msgspec.field(default_factory=Spool)
    metrics: Metrics = msgspec.field(default_factory=Metrics)
    log: Log = msgspec.field(default_factory=Log)
    consent: Consent = msgspec.field(default_factory=Consent)
    reconnect: Reconnect = msgspec.field(default_factory=Reconnect)
    supervisor: Supervisor = msgspec.field(default_factory=Supervisor)
    ingest: Ingest = msgspec.field(default_factory=Ingest)
    keys: Keys = msgspec.field(default_factory=Keys)
    path: str = ""  # set by load_config: the file it came from

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("policies must name at least one policy file")
        if self.group and any(c in self.group for c in "/+#"):
            raise ValueError("group must be one topic level (no '/', '+', '#')")
        if self.dead_letter and any(c in self.dead_letter for c in "+#"):
            raise ValueError("dead_letter must be a concrete topic prefix")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve(base: Path, value: str) -> str:
    return str((base / value).resolve()) if value and not os.path.isabs(value) else value


def locate_key(text: str, dotted: str, exact: bool = False) -> int | None:
    """Line of ``dotted`` (``cloud.url``, ``ingest.gt06.listen``) in config TOML, else of its
    nearest enclosing table or key that is set (``[cloud]``), for errors a person can act on."""
    best, best_len = None, -1
    table = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith(("'", '"')) else raw.strip()
        if m := re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?", line):
            table, full = m.group(1).replace(" ", ""), m.group(1).replace(" ", "")
        elif m := re.match(r"([A-Za-z0-9_.\- \"']+?)\s*=", line):
            full = ".".join(filter(None, (table, m.group(1).replace(" ", "").replace('"', "").replace("'", ""))))
        else:
            continue
        if full == dotted:
            return n
        if dotted.startswith(full + ".") and len(full) > best_len:
            best, best_len = n, len(full)
    return None if exact else best


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; relative file names are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError(f"{path}:{m.group(1)}: TOML syntax: {exc}" if m else f"{path}: TOML syntax: {exc}") from None
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `")
        key = re.sub(r"\[\d+\]", "", at.rstrip("`").removeprefix("$").removeprefix("."))
        unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
        target = ".".join(filter(None, (key, unknown.group(1) if unknown else "")))
        named = re.match(r"([a-z_]+) ", message)  # a check in __post_init__ names its key first
        candidate = ".".join(filter(None, (target, named.group(1) if named else "")))
        if named and locate_key(text, candidate, exact=True):
            target = candidate
        line = locate_key(text, target)
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {target + ': ' if target else ''}{message}") from None
    for side, ep in (("local", cfg.local), ("cloud", cfg.cloud)):
        if not ep.tls and not _is_loopback(ep.host) and not ep.allow_insecure:
            raise ConfigError(
                f"{path}:{locate_key(text, f'{side}.url')}: [{side}] url is plaintext mqtt:// to a non-loopback host; "
                f"use mqtts:// or set allow_insecure = true in [{side}]"
            )
    base = path.resolve().parent
    for ep in (cfg.local, cfg.cloud):
        for name in ("password_file", "ca_file", "cert_file", "key_file"):
            setattr(ep, name, _resolve(base, getattr(ep, name)))
    cfg.policies = [_resolve(base, p) for p in cfg.policies]
    cfg.trusted_policy_keys = [_resolve(base, p) for p in cfg.trusted_policy_keys]
    cfg.shadow_policies = [_resolve(base, p) for p in cfg.shadow_policies]
    cfg.keys_file = _resolve(base, cfg.keys_file)
    cfg.spool.path = _resolve(base, cfg.spool.path)
    cfg.ingest.gt06.allowed_imeis_file = _resolve(base, cfg.ingest.gt06.allowed_imeis_file)
    cfg.ingest.jt808.allowed_terminals_file = _resolve(base, cfg.ingest.jt808.allowed_terminals_file)
    cfg.consent.public_keys_file = _resolve(base, cfg.consent.public_keys_file)
    cfg.consent.verify_keys()
    cfg.path = str(path.resolve())
    return cfg


# What SIGHUP may change in a running gateway (a key, or a table whose every key may change).
# Everything else (broker URLs and credentials, client ids, group, spool, metrics, listeners)
# is bound to connections, files or sockets opened at start: changing it needs a restart.
LIVE_KEYS = frozenset({
    "policies", "shadow_policies", "trusted_policy_keys", "keys_file", "dead_letter", "shutdown_timeout_s",
    "consent", "log", "reconnect", "keys", "ingest.gt06.allowed_imeis", "ingest.gt06.allowed_imeis_file",
    "ingest.jt808.allowed_terminals", "ingest.jt808.allowed_terminals_file",
})


def restart_keys(running: Config, new: Config) -> list[str]:
    """The dotted keys whose change ``new`` asks for but only a restart can apply."""
    changed: list[str] = []

    def walk(a: object, b: object, prefix: str) -> None:
        if prefix in LIVE_KEYS or prefix == "path":
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            changed.append(prefix)

    walk(msgspec.to_builtins(running), msgspec.to_builtins(new), "")
    return changed
