"""Read a policy TOML file into the ``Policy`` model, with errors a person can act on.

TOML syntax errors carry their line; schema errors carry a path such as
``$.field[3].length``, which is mapped back to the line of that table in the
file (the 4th ``[[field]]``), so an error reads
``rules/x.toml:42: field[3].length: Expected `int`, got `str```.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from gateway.policy.model import Policy

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class PolicyError(Exception):
    """An invalid policy: ``str()`` is ``file:line: path: problem``."""

    def __init__(self, file: str, message: str, line: int | None = None, path: str = ""):
        self.file, self.line, self.path, self.message = file, line, path, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {path + ': ' if path else ''}{message}")


class Source(msgspec.Struct, frozen=True):
    """A loaded policy with where it came from, for provenance."""

    policy: Policy
    file: str
    sha256: str  # of the file's bytes: which exact rules minimised a message
    text: str = ""  # the TOML, so later errors can name a line
    signer: str = ""  # key id of the trusted key whose signature was verified ("" = not checked)


def load(path: str | Path, trusted: Mapping[str, Ed25519PublicKey] | None = None) -> Source:
    """Read and validate a pack; with ``trusted`` signers' keys, refuse it unless ``PATH.sig`` verifies.

    The signature is checked over the very bytes that are then parsed (read once).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(str(path), f"cannot read: {exc.strerror}") from None
    if trusted is None:
        return loads(data, str(path))
    from gateway.policy.signing import verify

    signer = verify(path, data, trusted)
    return msgspec.structs.replace(loads(data, str(path)), signer=signer)


def loads(data: bytes, file: str = "<policy>") -> Source:
    try:
        text = data.decode("utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError:
        raise PolicyError(file, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise PolicyError(file, f"TOML syntax: {exc}", int(m.group(1)) if m else None) from None
    try:
        policy = msgspec.convert(raw, Policy)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `")
        path = at.rstrip("`").removeprefix("$.").removeprefix("$")
        raise PolicyError(file, message, locate(text, path), path) from None
    return Source(policy, file, hashlib.sha256(data).hexdigest(), text)


def locate(text: str, path: str) -> int | None:
    """Best-effort line of a schema path (``field[3].length``) in the TOML text."""
    m = re.match(r"([A-Za-z_]+)(?:\[(\d+)\])?(?:\.([A-Za-z_]+))?", path)
    if not m:
        return None
    table, index, key = m.group(1), m.group(2), m.group(3)
    lines = text.splitlines()
    header = re.compile(rf"\s*\[\[\s*{table}\s*\]\]" if index is not None else rf"\s*\[\s*{table}\s*\]")
    seen, start = -1, None
    for n, line in enumerate(lines):
        if header.match(line):
            seen += 1
            if index is None or seen == int(index):
                start = n
                break
    if start is None:
        return None
    if key:
        for n in range(start + 1, len(lines)):
            if lines[n].lstrip().startswith("["):
                break
            if re.match(rf"\s*{key}\s*=", lines[n]):
                return n + 1
    return start + 1
