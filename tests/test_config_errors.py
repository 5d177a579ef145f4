"""Configuration errors name the file, the line and the key, as policy errors do
(``file:line: key: problem``), and never quote a value (it could be a secret)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.service.config import ConfigError, load_config

HEAD = 'policies = ["p.toml"]\n\n[local]\nurl = "mqtt://127.0.0.1:1883"\n\n'  # lines 1-5

CASES = [
    # (body after HEAD, line, key, problem); HEAD ends on line 5, so the body starts on line 6
    ('[cloud]\nurl = "mqtt://127.0.0.1"\npassword = "hunter2"\n', 8, "cloud.password", "unknown field `password`"),
    ('[cloud]\nurl = "mqtt://127.0.0.1"\n# a comment\nkeepalive_s = "30"\n', 9, "cloud.keepalive_s", "Expected `int`"),
    ('[cloud]\nurl = "mqtt://127.0.0.1"\nkeepalive_s = 2\n', 8, "cloud.keepalive_s", "between 5 and 3600"),
    ('[cloud]\nurl = "mqtt://cloud.example.com:1883"\n', 7, "", "[cloud] url is plaintext"),
    ('[cloud]\nurl = "mqtt://127.0.0.1"\n\n[ingest.gt06]\nlisten = "0.0.0.0:5023"\nmax_bad_frame = 3\n', 11,
     "ingest.gt06.max_bad_frame", "unknown field"),
    ('[cloud]\nurl = "mqtt://127.0.0.1"\n[spool]\npath = "s.db"\nmax_bytes = 10\n', 10, "spool.max_bytes",
     "at least 1 MiB"),
    ('[cloud]\nurl = "mqtt://127.0.0.1"\n[metrics]\nlisten = 9108\n', 9, "metrics.listen", "Expected `str`"),
    ('[cloud]\nurl = "mqtt://127.0.0.1"\n[log\nlevel = "info"\n', 8, "", "TOML syntax"),
]


@pytest.mark.parametrize(("body", "line", "key", "problem"), CASES)
def test_config_errors_carry_line_and_key(tmp_path: Path, body: str, line: int, key: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(HEAD + body)
    assert path.read_text().splitlines()[line - 1].strip()  # the line named is one the test wrote
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: " + (f"{key}: " if key else "")), text
    assert problem in text and "hunter2" not in text


def test_top_level_key_and_cli_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('# site config\npolicies = []\n[local]\nurl = "mqtt://127.0.0.1"\n[cloud]\nurl = "mqtt://127.0.0.1"\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: policies: policies must name at least one"):
        load_config(path)
    run = subprocess.run([str(Path(sys.executable).with_name("gateway")), "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    # a configuration exit: 2, or 78 (EX_CONFIG) where the service distinguishes it from usage errors
    assert run.returncode in (2, 78) and f"{path}:2: policies:" in run.stderr
