"""The package stands alone: a wheel installed into a fresh virtual environment, used
from an empty folder, with no repository around it.

The same steps as the Dockerfile's build (``pip wheel .`` then ``pip install`` of the
wheel into a clean Python), since these machines cannot pull a container base image.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
import venv
from pathlib import Path

import pytest

from gateway.bundle import InitError, init_site, packs
from gateway.mosquitto import free_port
from gateway.service.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_license_and_changelog_are_declared() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_init_writes_a_site_folder_that_loads(tmp_path: Path) -> None:
    site = tmp_path / "site"
    init_site(site)
    names = sorted(p.name for p in (site / "rules").iterdir())
    assert names == sorted(p.name for p in (ROOT / "rules").glob("*.toml")) and len(names) >= 5
    assert stat.S_IMODE((site / "keys.json").stat().st_mode) == 0o600
    cfg = load_config(site / "config.toml")
    assert cfg.keys_file == str((site / "keys.json").resolve())
    assert Path(cfg.spool.path).is_relative_to(site.resolve())
    assert all(Path(p).is_relative_to(site.resolve()) and Path(p).exists() for p in cfg.policies)
    assert {Path(p).name for p in cfg.policies} <= {p.name for p in packs()}
    assert (site / "config.toml").read_text().startswith("# Written by `gateway init`")
    with pytest.raises(InitError, match="refusing to overwrite"):
        init_site(site)  # keys must never be replaced by a second init


def test_init_refuses_a_file_and_an_existing_site(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("gateway")
    (tmp_path / "file").write_text("x")
    run = _run(exe, "init", str(tmp_path / "file"), cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr and str(tmp_path / "file") in run.stderr
    assert _run(exe, "init", "site", cwd=tmp_path).returncode == 0
    keys = (tmp_path / "site" / "keys.json").read_bytes()
    again = _run(exe, "init", "site", cwd=tmp_path)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "site" / "keys.json").read_bytes() == keys


def _run(exe: Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_from_an_empty_folder(tmp_path: Path, broker) -> None:
    dist, env_dir, empty = tmp_path / "dist", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("telemetry_gateway-*.whl")
    venv.create(env_dir, with_pip=True)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    gw = env_dir / "bin" / "gateway"

    version = _run(gw, "--version", cwd=empty)
    assert version.returncode == 0 and version.stdout.strip() == "gateway 0.1.0", version
    init = _run(gw, "init", "site", cwd=empty)
    assert init.returncode == 0, init.stderr
    rules = sorted(str(p) for p in (empty / "site" / "rules").glob("*.toml"))
    check = _run(gw, "check", *rules, cwd=empty)
    assert check.returncode == 0, check.stderr
    assert check.stdout.count("ok ") == len(rules) >= 5
    demo = _run(gw, "demo", "--offline", cwd=empty)
    assert demo.returncode == 0, demo.stderr
    for pack in rules:  # every bundled policy shows its samples
        assert f"== {tomllib.loads(Path(pack).read_text())['policy']['name']} " in demo.stdout

    # `gateway run` against the site folder as written (only the ports moved to free ones).
    config = empty / "site" / "config.toml"
    metrics = free_port()
    config.write_text(config.read_text().replace("127.0.0.1:1883", f"127.0.0.1:{broker.port}")
                      .replace("127.0.0.1:9108", f"127.0.0.1:{metrics}"))
    with (empty / "run.log").open("wb") as log:
        proc = subprocess.Popen([str(gw), "run", "--config", str(config)], cwd=empty, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        status = 0
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1) as r:
                    status = r.status
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert status == 200, (empty / "run.log").read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (empty / "run.log").read_text()[-2000:]
    assert (empty / "site" / "spool" / "spool.db").exists()
