"""Signed policy packs: Ed25519 detached signatures beside each pack.

A pack is the promise a site makes about personal data, so whoever can write
``rules/`` must not be able to weaken it unnoticed. A signer (the privacy
engineer who reviewed the pack) holds an Ed25519 private key; the gateway is
configured with the signers' public keys (``trusted_policy_keys``) and refuses
any pack without a valid signature from one of them.

``POLICY.sig`` is a small JSON document::

    {"format": "telemetry-gateway-policy-signature/1", "key_id": "3f9a...",
     "file": "jimi-tracksolid.toml", "sha256": "...", "signature": "<base64>"}

The signature covers the format tag, the pack's file name and its exact bytes,
so a tampered byte, a signature copied onto another pack and a renamed pack all
fail. ``key_id`` names the signer's key (the first 16 hex digits of the SHA-256
of the raw public key) so that a site trusting two keys during a signing-key
rotation knows which one to check; ``sha256`` is informative (the signature is
what is checked).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.policy.load import PolicyError

FORMAT = "telemetry-gateway-policy-signature/1"


class SignatureError(PolicyError):
    """A pack's signature is missing, malformed, untrusted or does not match: refused like any invalid pack."""


class Signature(msgspec.Struct, forbid_unknown_fields=True):
    """The contents of a ``.sig`` file."""

    format: str
    key_id: str
    file: str
    sha256: str
    signature: str


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _message(name: str, data: bytes) -> bytes:
    return FORMAT.encode() + b"\n" + name.encode() + b"\n" + data


def sig_path(policy: str | os.PathLike[str]) -> Path:
    p = Path(policy)
    return p.with_name(p.name + ".sig")


def keygen_signing(path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 private key to ``path`` (0600, never overwritten) and ``path.pub``; return its id."""
    path = Path(path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SignatureError(str(path), "exists; a signing key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    Path(str(path) + ".pub").write_bytes(pub)
    return key_id(private.public_key())


def load_private(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise SignatureError(str(path), f"cannot read signing key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise SignatureError(str(path), "not a PEM Ed25519 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(str(path), "not an Ed25519 private key")
    return key


def load_public(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise SignatureError(str(path), f"cannot read trusted key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise SignatureError(str(path), "not a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(str(path), "not an Ed25519 public key")
    return key


def trusted(paths: list[str]) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by key id."""
    return {key_id(k): k for k in (load_public(p) for p in paths)}


def sign(private: Ed25519PrivateKey, policy: str | os.PathLike[str]) -> Path:
    """Write ``POLICY.sig`` over the pack's exact bytes; return its path."""
    policy = Path(policy)
    data = policy.read_bytes()
    sig = Signature(FORMAT, key_id(private.public_key()), policy.name, hashlib.sha256(data).hexdigest(),
                    base64.b64encode(private.sign(_message(policy.name, data))).decode())
    out = sig_path(policy)
    out.write_bytes(msgspec.json.format(msgspec.json.encode(sig)) + b"\n")
    return out


def verify(policy: str | os.PathLike[str], data: bytes, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check ``data`` (the pack's bytes as loaded) against ``POLICY.sig``; return the signer's key id."""
    policy = Path(policy)
    where = sig_path(policy)
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        raise SignatureError(str(policy), f"not signed (no {where.name})") from None
    except OSError as exc:
        raise SignatureError(str(policy), f"cannot read {where.name}: {exc.strerror}") from None
    try:
        sig = msgspec.json.decode(raw, type=Signature)
        blob = base64.b64decode(sig.signature, validate=True)
    except (msgspec.DecodeError, ValueError):
        raise SignatureError(str(policy), f"{where.name} is malformed") from None
    if sig.format != FORMAT:
        raise SignatureError(str(policy), f"{where.name} has an unknown format {sig.format!r}")
    key = keys.get(sig.key_id)
    if key is None:
        raise SignatureError(str(policy), f"signed by key {sig.key_id}, which is not trusted")
    if sig.file != policy.name:
        raise SignatureError(str(policy), f"the signature is for {sig.file!r} (renamed or copied pack)")
    try:
        key.verify(blob, _message(policy.name, data))
    except InvalidSignature:
        raise SignatureError(str(policy), f"signature by {sig.key_id} does not match the pack's bytes") from None
    return sig.key_id
