"""Key material, kept apart from policy.

A policy says *what* to pseudonymise or encrypt; the secrets live in a key
file (JSON, mode 0600) or in the environment, so that policies can be published
and reviewed while keys stay with the operator. A key file holds several keys by
id; the ``active`` one is used for new output, older ones stay for ``gateway
reveal``. Every purpose gets its own subkey through HKDF, so the HMAC key of one
pseudonym domain and epoch never equals another's or the encryption key.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
import time
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ID = re.compile(r"[a-z0-9]{1,16}")
ENV_FILE = "GATEWAY_KEYS_FILE"
ENV_JSON = "GATEWAY_KEYS"

# Public, well-known key used by `gateway check` for inline policy tests, so
# that expected pseudonyms in a policy file are stable. Never for production.
TEST_KEY_ID = "test"
_TEST_SECRET = b"gateway-inline-test-key-public!!"


class KeyFileError(Exception):
    """A key file or key source is missing or malformed (message has no secrets)."""


def _weakness(secret: bytes) -> str | None:
    """Why ``secret`` must not protect real data: the public test key, or no entropy to speak of."""
    if secret == _TEST_SECRET:
        return "is the public test key"
    if len(set(secret)) < 16:  # all zeros, one repeated byte, a short pattern; 32 random bytes have ~30 distinct
        return "is not random (all zero or fewer than 16 distinct byte values)"
    return None


class _KeyFile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    active: str
    keys: dict[str, str]
    previous: str = ""  # the key that was active before the last rotation ("" = none)
    rotated_at: float = 0.0  # when it was rotated (Unix time): starts the pseudonym transition


class Keyring:
    """Master secrets by key id, with HKDF subkeys per purpose."""

    def __init__(
        self, active: str, secrets_by_id: dict[str, bytes], previous: str = "", rotated_at: float = 0.0
    ) -> None:
        if active not in secrets_by_id:
            raise KeyFileError(f"active key id {active!r} is not in the key file")
        if previous and (previous not in secrets_by_id or previous == active):
            previous = ""  # retired, or no longer a different key: no transition
        for kid, secret in secrets_by_id.items():
            if not KEY_ID.fullmatch(kid):
                raise KeyFileError(f"key id {kid!r} must match [a-z0-9]{{1,16}}")
            if len(secret) < 32:
                raise KeyFileError(f"key {kid!r} is shorter than 32 bytes")
        self.active = active
        self.previous = previous
        self.rotated_at = rotated_at
        self._secrets = dict(secrets_by_id)

    def __repr__(self) -> str:  # never show secrets, even in a traceback
        return f"Keyring(active={self.active!r}, ids={sorted(self._secrets)})"

    @property
    def ids(self) -> list[str]:
        return sorted(self._secrets)

    def in_transition(self, now: float, transition_s: float) -> bool:
        """Whether ``now`` is within ``transition_s`` of the last rotation (and its old key is still here)."""
        return bool(self.previous) and transition_s > 0 and now < self.rotated_at + transition_s

    def as_previous(self) -> Keyring:
        """The same secrets with the previous key active: what made pseudonyms before the rotation."""
        if not self.previous:
            raise KeyFileError("no previous key: the key file was not rotated, or the old key is retired")
        return Keyring(self.previous, self._secrets)

    def derive(self, purpose: str, length: int = 32, kid: str | None = None) -> bytes:
        """Subkey for ``purpose`` (e.g. ``pseudonymise|device|2026-11``)."""
        kid = kid or self.active
        try:
            master = self._secrets[kid]
        except KeyError:
            raise KeyFileError(f"unknown key id {kid!r}") from None
        info = b"telemetry-gateway/v1|" + purpose.encode()
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)

    @classmethod
    def test(cls) -> Keyring:
        return cls(TEST_KEY_ID, {TEST_KEY_ID: _TEST_SECRET})

    @classmethod
    def from_json(cls, data: bytes | str, source: str = "the key file") -> Keyring:
        """Keys for real use: the public test key and non-random secrets are refused
        (``Keyring.test()`` is the one way to the test key, behind ``--test-keys``).

        A KeyFileError says what is wrong and where (a JSON path, a key id), never a secret.
        """
        try:
            parsed = msgspec.json.decode(data, type=_KeyFile)
        except msgspec.ValidationError as exc:  # names the path ("at `$.keys`"), not the value
            raise KeyFileError(f"malformed {source}: {exc}") from None
        except msgspec.DecodeError:
            raise KeyFileError(
                f'malformed {source}: not JSON (expected {{"active": "<id>", "keys": {{"<id>": "<base64>"}}}})'
            ) from None
        decoded = {}
        for kid, text in parsed.keys.items():
            try:
                decoded[kid] = base64.b64decode(text, validate=True)
            except ValueError:
                raise KeyFileError(f"malformed {source}: key {kid!r} is not valid base64") from None
        for kid, secret in sorted(decoded.items()):
            weak = _weakness(secret)
            if weak:
                raise KeyFileError(f"key {kid!r} in {source} {weak}; create real keys with `gateway keygen`")
        return cls(parsed.active, decoded, parsed.previous, parsed.rotated_at)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a key file that only its owner can access (no group or other permission bits)."""
        name = str(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # the mode is checked on what was opened
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {name!r}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"key file {name!r} has mode {mode:04o}: group or others can access it; "
                    f"a key file must be private to its owner (chmod 600 {name})"
                )
            try:
                data = f.read()
            except OSError as exc:
                raise KeyFileError(f"cannot read key file {name!r}: {exc.strerror}") from None
        return cls.from_json(data, f"key file {name!r}")

    @classmethod
    def from_env(cls, path: str | None = None) -> Keyring:
        """Keys from ``path``, else ``$GATEWAY_KEYS_FILE``, else ``$GATEWAY_KEYS`` (JSON)."""
        path = path or os.environ.get(ENV_FILE)
        if path:
            return cls.from_file(path)
        if os.environ.get(ENV_JSON):
            return cls.from_json(os.environ[ENV_JSON], f"${ENV_JSON}")
        raise KeyFileError(f"no keys: pass --keys FILE or set ${ENV_FILE} or ${ENV_JSON}")

    def to_json(self) -> bytes:
        keys = {k: base64.b64encode(v).decode() for k, v in sorted(self._secrets.items())}
        doc = _KeyFile(self.active, keys, self.previous, self.rotated_at)
        return msgspec.json.format(msgspec.json.encode(doc)) + b"\n"


def keygen(path: str | os.PathLike[str], key_id: str | None = None, rotate: bool = False) -> str:
    """Write a new key (0600). With ``rotate``, add it to an existing file and make it active
    (the old active key is recorded as ``previous``, with the time, for the pseudonym transition)."""
    path = Path(path)
    if rotate:
        ring = Keyring.from_file(path)
        kid = key_id or _next_id(ring.ids)
        if kid in ring.ids:
            raise KeyFileError(f"key id {kid!r} already exists in {str(path)!r}")
        ring = Keyring(kid, {**ring._secrets, kid: secrets.token_bytes(32)}, ring.active, time.time())
    else:
        kid = key_id or "k1"
        ring = Keyring(kid, {kid: secrets.token_bytes(32)})
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # e.g. .gateway/ of the sample config
    _write(path, ring.to_json(), replace=rotate)
    return kid


def retire(path: str | os.PathLike[str], key_id: str) -> None:
    """Remove ``key_id`` from a key file (refused while it is active). Values it made can no longer
    be revealed, and its pseudonyms no longer computed: retire a key once nothing needs them."""
    path = Path(path)
    ring = Keyring.from_file(path)
    if key_id not in ring.ids:
        raise KeyFileError(f"key id {key_id!r} is not in {str(path)!r}")
    if key_id == ring.active:
        raise KeyFileError(f"key id {key_id!r} is the active key of {str(path)!r}; rotate first, then retire it")
    rest = {k: v for k, v in ring._secrets.items() if k != key_id}
    _write(path, Keyring(ring.active, rest, ring.previous, ring.rotated_at).to_json(), replace=True)


def _next_id(ids: list[str]) -> str:
    """``k<N+1>`` past the highest ``k<N>`` (a retired id is never reused)."""
    numbers = [int(i[1:]) for i in ids if re.fullmatch(r"k\d{1,15}", i)]
    return f"k{max(numbers, default=len(ids)) + 1}"


def _write(path: Path, data: bytes, replace: bool) -> None:
    """Write a key file (0600): a new one exclusively, or a replacement through a temporary file."""
    # O_EXCL: never overwrite an existing key file, nor write through a file or link someone
    # planted at the temporary name; O_NOFOLLOW: never follow a symbolic link there either.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    tmp = path.with_name(path.name + ".tmp") if replace else path
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        if replace:
            raise KeyFileError(
                f"{str(tmp)!r} exists (an interrupted rotation?); check and remove it, then retry"
            ) from None
        raise KeyFileError(f"{str(path)!r} exists; use --rotate to add a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {str(tmp)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
    except BaseException:
        if replace:
            tmp.unlink(missing_ok=True)
        raise
