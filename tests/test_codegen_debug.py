"""The generated hot path can be read and debugged: named sources in linecache, comments naming each
field and rule, ``gateway check --dump-code``."""

from __future__ import annotations

import linecache
import subprocess
import traceback
from pathlib import Path

import pytest
from service_harness import GATEWAY

from gateway.keys import Keyring
from gateway.pipeline import Engine
from gateway.policy.codegen import sources
from gateway.policy.load import load

ROOT = Path(__file__).resolve().parent.parent
TRACKSOLID = ROOT / "rules" / "jimi-tracksolid.toml"


class _Broken(dict):
    """A consent table whose lookup fails: the traceback then passes through the generated ``run``."""

    def get(self, key: object, default: object = None) -> object:
        raise RuntimeError("consent store down")


def test_a_traceback_through_the_generated_run_shows_its_source_and_policy() -> None:
    engine = Engine([load(TRACKSOLID)], Keyring.test())
    payload = b'{"imei":"358756091234567","latitude":12.971598,"longitude":77.594562}'
    with pytest.raises(RuntimeError) as info:
        engine.process("tracksolid/358756091234567/location", payload, consents=_Broken(x=frozenset()))
    text = "".join(traceback.format_exception(info.value))
    assert '<gateway policy jimi-tracksolid: make #' in text
    assert "granted_of(plan, obj, device, consents)" in text  # the generated line itself, from linecache


def test_generated_source_names_every_declared_field_and_its_rule() -> None:
    engine = Engine([load(TRACKSOLID)], Keyring.test())
    generated = sources(engine.runner(engine.plans[0]))
    assert generated and all(name.startswith("<gateway policy jimi-tracksolid: ") for name, _ in generated)
    for name, source in generated:
        assert linecache.getlines(name) == source.splitlines(True)
    text = "\n".join(source for _, source in generated)
    for line in ("# imei: pseudonymise", "# latitude, longitude: coarsen_location", "# login_ip: truncate_ip",
                 "# alarm: generalise", "# leak guard: "):
        assert line in text, line


def test_check_dump_code_prints_the_generated_python(tmp_path: Path) -> None:
    r = subprocess.run([GATEWAY, "check", "--dump-code", str(TRACKSOLID)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("# --- <gateway policy jimi-tracksolid: ") >= 2
    assert "def run_full(payload, upstream, device, consents):" in r.stdout
    for chunk in r.stdout.split("# --- ")[1:]:  # what it prints is Python
        compile(chunk.split("\n", 1)[1].split("\nok ", 1)[0], "dump", "exec")
