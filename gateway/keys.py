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


class _KeyFile(msgspec.Struct, forbid_unknown_fields=True):
    active: str
    keys: dict[str, str]


class Keyring:
    """Master secrets by key id, with HKDF subkeys per purpose."""

    def __init__(self, active: str, secrets_by_id: dict[str, bytes]):
        if active not in secrets_by_id:
            raise KeyFileError(f"active key id {active!r} is not in the key file")
        for kid, secret in secrets_by_id.items():
            if not KEY_ID.fullmatch(kid):
                raise KeyFileError(f"key id {kid!r} must match [a-z0-9]{{1,16}}")
            if len(secret) < 32:
                raise KeyFileError(f"key {kid!r} is shorter than 32 bytes")
        self.active = active
        self._secrets = dict(secrets_by_id)

    def __repr__(self) -> str:  # never show secrets, even in a traceback
        return f"Keyring(active={self.active!r}, ids={sorted(self._secrets)})"

    @property
    def ids(self) -> list[str]:
        return sorted(self._secrets)

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
    def from_json(cls, data: bytes | str) -> Keyring:
        """Parse a key file; a KeyFileError says what is wrong and where (a path, a key id), never a secret."""
        try:
            parsed = msgspec.json.decode(data, type=_KeyFile)
        except msgspec.ValidationError as exc:  # names the path ("at `$.keys`"), not the value
            raise KeyFileError(f"malformed key file: {exc}") from None
        except msgspec.DecodeError:
            raise KeyFileError(
                'malformed key file: not JSON (expected {"active": "<id>", "keys": {"<id>": "<base64>"}})'
            ) from None
        decoded = {}
        for kid, text in parsed.keys.items():
            try:
                decoded[kid] = base64.b64decode(text, validate=True)
            except ValueError:
                raise KeyFileError(f"malformed key file: key {kid!r} is not valid base64") from None
        return cls(parsed.active, decoded)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Keyring:
        try:
            return cls.from_json(Path(path).read_bytes())
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {str(path)!r}: {exc.strerror}") from None
        except KeyFileError as exc:
            raise KeyFileError(f"key file {str(path)!r}: {exc}") from None

    @classmethod
    def from_env(cls, path: str | None = None) -> Keyring:
        """Keys from ``path``, else ``$GATEWAY_KEYS_FILE``, else ``$GATEWAY_KEYS`` (JSON)."""
        path = path or os.environ.get(ENV_FILE)
        if path:
            return cls.from_file(path)
        if os.environ.get(ENV_JSON):
            return cls.from_json(os.environ[ENV_JSON])
        raise KeyFileError(f"no keys: pass --keys FILE or set ${ENV_FILE} or ${ENV_JSON}")

    def to_json(self) -> bytes:
        keys = {k: base64.b64encode(v).decode() for k, v in sorted(self._secrets.items())}
        return msgspec.json.format(msgspec.json.encode(_KeyFile(self.active, keys))) + b"\n"


def keygen(path: str | os.PathLike, key_id: str | None = None, rotate: bool = False) -> str:
    """Write a new key (0600). With ``rotate``, add it to an existing file and make it active."""
    path = Path(path)
    if rotate:
        ring = Keyring.from_file(path)
        kid = key_id or f"k{len(ring.ids) + 1}"
        if kid in ring.ids:
            raise KeyFileError(f"key id {kid!r} already exists in {str(path)!r}")
        ring = Keyring(kid, {**ring._secrets, kid: secrets.token_bytes(32)})
    else:
        kid = key_id or "k1"
        ring = Keyring(kid, {kid: secrets.token_bytes(32)})
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # e.g. .gateway/ of the sample config
    data = ring.to_json()
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if not rotate:
        flags |= os.O_EXCL  # never overwrite an existing key file by accident
        tmp = path
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{str(path)!r} exists; use --rotate to add a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if rotate:
        os.replace(tmp, path)
    return kid
