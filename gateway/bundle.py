"""Files shipped inside the package, and ``gateway init`` which lays them out as a site folder.

The policy packs (``rules/*.toml``) and the sample ``config.toml`` are package data
(``gateway/packs`` and ``gateway/config.sample.toml`` link to them in a source
checkout), so an installed wheel finds them without the repository.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from gateway.keys import keygen

__all__ = ["InitError", "init_site", "packs", "sample_config"]


class InitError(Exception):
    """``gateway init`` would overwrite something."""


def packs() -> list[Path]:
    """The bundled policy packs, sorted by file name."""
    root = resources.files("gateway") / "packs"
    return sorted((Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)


def sample_config() -> str:
    """The sample ``config.toml`` (every key documented in docs/configuration.md)."""
    return (resources.files("gateway") / "config.sample.toml").read_text()


SYSTEMD_STATE = "/var/lib/telemetry-gateway"  # the unit's StateDirectory (deploy/systemd)


def _site_config(systemd: bool = False) -> str:
    """The sample, with the key file and spool inside the site folder (paths are relative to the config).

    ``systemd``: laid out for deploy/systemd/telemetry-gateway.service instead: the key
    file reaches the service as a credential ($GATEWAY_KEYS_FILE), and the spool lives
    in the unit's state directory (the rest of the file system is read-only to it).
    """
    text = "# Written by `gateway init`: file names below are relative to this folder.\n" + sample_config()
    if systemd:
        keys = ('# keys_file is not set: the unit passes keys.json as a credential ($GATEWAY_KEYS_FILE).\n'
                '# Rotate with: gateway keygen --rotate keys.json, then systemctl reload telemetry-gateway')
        spool = f'path = "{SYSTEMD_STATE}/spool.db"   # the unit\'s StateDirectory; minimised messages only'
    else:
        keys = 'keys_file = "keys.json"            # mode 0600; rotate with: gateway keygen --rotate keys.json'
        spool = 'path = "spool/spool.db"           # minimised messages only'
    text = re.sub(r'(?m)^keys_file = .*$', lambda _: keys, text)
    return re.sub(r'(?m)^path = "[^"]*spool\.db".*$', lambda _: spool, text)


def init_site(folder: str | Path, systemd: bool = False) -> list[Path]:
    """Write ``folder``/config.toml, rules/ (the packs) and keys.json (0600); return what was written.

    Refuses to overwrite: a site folder holds keys, and a second ``init`` must not
    replace them (the pseudonyms of every device would change).
    """
    folder = Path(folder)
    targets = [folder / "config.toml", folder / "keys.json", *(folder / "rules" / p.name for p in packs())]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise InitError(f"refusing to overwrite {', '.join(existing[:3])}" + (" ..." if len(existing) > 3 else ""))
    (folder / "rules").mkdir(parents=True, exist_ok=True)
    written = []
    for pack in packs():
        dest = folder / "rules" / pack.name
        dest.write_bytes(pack.read_bytes())
        written.append(dest)
    config = folder / "config.toml"
    config.write_text(_site_config(systemd))
    keygen(folder / "keys.json")
    return [config, folder / "keys.json", *written]
