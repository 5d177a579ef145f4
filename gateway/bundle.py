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


def _site_config() -> str:
    """The sample, with the key file and spool inside the site folder (paths are relative to the config)."""
    text = "# Written by `gateway init`: file names below are relative to this folder.\n" + sample_config()
    text = re.sub(r'(?m)^keys_file = .*$', 'keys_file = "keys.json"            # mode 0600; rotate with: '
                  'gateway keygen --rotate keys.json', text)
    text = re.sub(r'(?m)^path = "[^"]*spool\.db".*$', 'path = "spool/spool.db"           # minimised messages only',
                  text)
    return text


def init_site(folder: str | Path) -> list[Path]:
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
    config.write_text(_site_config())
    keygen(folder / "keys.json")
    return [config, folder / "keys.json", *written]
