"""deploy/ and the Dockerfile: each artifact is checked by the real tool where one runs here
(systemd-analyze, Mosquitto), and every config key or environment variable they set must
be one the gateway reads (decoded against the config Structs, unknown keys rejected)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest
import yaml
from brokers import find_mosquitto
from service_harness import wait_until

from gateway.mosquitto import free_port
from gateway.service.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "telemetry-gateway.service"
GATEWAY_BIN = Path(sys.executable).with_name("gateway")


def config_from(text: str) -> Config:
    """Decode like ``load_config``: an unknown key or a wrong type raises."""
    return msgspec.convert(tomllib.loads(text), Config)


def env_names_read(cfg: Config) -> set[str]:
    """Environment variables the gateway reads with this config."""
    names = {"GATEWAY_KEYS_FILE", "GATEWAY_KEYS"}
    for ep in (cfg.local, cfg.cloud):
        names |= {n for n in (ep.username_env, ep.password_env) if n}
    return names


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def test_config_check_rejects_an_unknown_key() -> None:
    text = (DEPLOY / "site" / "config.toml").read_text()
    config_from(text)
    with pytest.raises(msgspec.ValidationError, match="max_inflite"):
        config_from(text.replace("max_inflight = 1000", "max_inflite = 1000", 1))


# -- systemd ---------------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_is_hardened() -> None:
    d = unit_directives()
    for key, value in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "StateDirectory": "telemetry-gateway", "RestartPreventExitStatus": "2 78",
        "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM", "CapabilityBoundingSet": "",
    }.items():
        assert d.get(key) == [value], key
    assert d["LoadCredential"] == ["keys.json:/etc/telemetry-gateway/keys.json"]
    assert d["Environment"] == ["GATEWAY_KEYS_FILE=%d/keys.json"]  # the credential, read by Keyring.from_env
    # above the time the gateway takes to spool what is in flight
    assert int(d["TimeoutStopSec"][0]) > config_from((DEPLOY / "site" / "config.toml").read_text()).shutdown_timeout_s


def test_init_for_systemd_matches_the_unit(tmp_path: Path) -> None:
    """`gateway init --systemd` writes the config the unit expects: no keys_file (the key is the
    unit's credential, read through $GATEWAY_KEYS_FILE), and the spool in its StateDirectory."""
    site = tmp_path / "etc"
    run = subprocess.run([str(GATEWAY_BIN), "init", "--systemd", str(site)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    cfg = load_config(site / "config.toml")
    d = unit_directives()
    assert cfg.keys_file == ""
    assert d["LoadCredential"] == [f"keys.json:/etc/{d['StateDirectory'][0]}/keys.json"]
    assert Path(cfg.spool.path).parent == Path("/var/lib") / d["StateDirectory"][0]
    assert (site / "keys.json").exists() and all(Path(p).is_relative_to(site) for p in cfg.policies)
    assert f"--config /etc/{d['ConfigurationDirectory'][0]}/config.toml" in d["ExecStart"][0]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run .ci/setup (Debian package systemd)"
    # Only the install prefix differs from the shipped unit: verify checks that ExecStart exists.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/telemetry-gateway/bin/gateway", str(GATEWAY_BIN)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result
    # and it would notice a mistake: a misspelt directive is reported
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "ProtectHomes" in result.stderr


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_shape_and_shipped_config(tmp_path: Path) -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(re.fullmatch(r"python:3\.\d+-slim(?: AS \w+)?|python:3\.\d+-slim", f) for f in froms), froms
    assert re.search(r"^USER gateway:gateway$", text, re.M) and "useradd --system --uid 10001" in text
    assert re.search(r'^VOLUME \["/var/lib/gateway"\]$', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*http://127\.0\.0\.1:9108/healthz", text, re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", "gateway"\]$', text, re.M)
    assert "pip wheel --no-deps" in text and "pip install --no-cache-dir /tmp/dist/*.whl" in text
    assert "tests/test_package.py" in text  # says how it is tested without a container runtime
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part
    # the config the image ships: valid, spool on the volume, /healthz on the HEALTHCHECK's port
    site = tmp_path / "etc-gateway"
    shutil.copytree(ROOT / "rules", site / "rules")
    shutil.copy(DEPLOY / "site" / "config.toml", site / "config.toml")
    cfg = load_config(site / "config.toml")
    assert all(Path(p).exists() for p in cfg.policies)
    assert cfg.spool.path.startswith("/var/lib/gateway/") and port_of(cfg.metrics.listen) == 9108
    assert not cfg.keys_file  # from $GATEWAY_KEYS_FILE, the mounted secret
    assert "GATEWAY_KEYS_FILE=/run/secrets/gateway-keys" in text


# -- Compose ---------------------------------------------------------------------------------


def test_compose_parses_and_sets_only_known_keys() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"mosquitto", "gateway"}
    gw = compose["services"]["gateway"]
    mounts = dict(v.split(":")[:2] for v in gw["volumes"] if v.startswith("./"))
    cfg_file = next(src for src, dst in mounts.items() if dst == "/etc/gateway/config.toml")
    cfg = config_from((DEPLOY / cfg_file).read_text())
    assert set(gw["environment"]) <= env_names_read(cfg), gw["environment"]
    assert gw["command"] == ["run", "--config", "/etc/gateway/config.toml"]
    assert gw["environment"]["GATEWAY_KEYS_FILE"] == "/run/secrets/" + "gateway-keys"
    assert set(gw["secrets"]) == set(compose["secrets"])
    for ep in (cfg.local, cfg.cloud):
        if ep.password_file:
            assert ep.password_file.removeprefix("/run/secrets/") in compose["secrets"]
    metrics_port = port_of(cfg.metrics.listen)
    assert any(p.endswith(f":{metrics_port}") for p in gw["ports"])
    assert f"127.0.0.1:{metrics_port}/readyz" in " ".join(gw["healthcheck"]["test"])
    assert cfg.spool.path.startswith("/var/lib/gateway/") and "gateway-spool:/var/lib/gateway" in gw["volumes"]
    # the gateway uses the broker's service listener, defined in the site.conf it mounts
    mosq = compose["services"]["mosquitto"]
    for volume in mosq["volumes"]:
        if volume.startswith("./mosquitto/site"):
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert cfg.local.host == "mosquitto" and f"listener {cfg.local.port}" in site_conf()
    assert int(gw["stop_grace_period"].rstrip("s")) > cfg.shutdown_timeout_s


# -- Kubernetes ------------------------------------------------------------------------------


def test_kubernetes_sidecar_parses_and_sets_only_known_keys() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "tracker-sidecar.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim"}
    cfg = config_from(kinds["ConfigMap"]["data"]["config.toml"])
    assert {Path(p).name for p in cfg.policies} <= {p.name for p in (ROOT / "rules").glob("*.toml")}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    gw = next(c for c in pod["containers"] if c["name"] == "gateway")
    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    assert ports["gt06"] == port_of(cfg.ingest.gt06.listen) and ports["metrics"] == port_of(cfg.metrics.listen)
    assert {e["name"] for e in gw["env"]} <= env_names_read(cfg)
    assert gw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    mounts = {m["mountPath"] for m in gw["volumeMounts"]}
    assert "/etc/gateway/config.toml" in mounts and any(cfg.spool.path.startswith(m + "/") for m in mounts)
    secret_dir = next(m["mountPath"] for m in gw["volumeMounts"] if m["name"] == "secrets")
    assert cfg.cloud.password_file.startswith(secret_dir + "/")
    assert next(e["value"] for e in gw["env"] if e["name"] == "GATEWAY_KEYS_FILE").startswith(secret_dir + "/")
    service_ports = {p["name"]: p for p in kinds["Service"]["spec"]["ports"]}
    assert service_ports["gt06"]["targetPort"] == "gt06" and service_ports["gt06"]["port"] == 5023
    assert pod["terminationGracePeriodSeconds"] > cfg.shutdown_timeout_s
    assert gw["securityContext"]["allowPrivilegeEscalation"] is False and pod["securityContext"]["runAsNonRoot"]


# -- Mosquitto -------------------------------------------------------------------------------


def site_conf() -> str:
    return (DEPLOY / "mosquitto" / "site.conf").read_text()


def test_site_conf_has_the_recommended_settings() -> None:
    conf = site_conf()
    for line in ("persistence true", "max_queued_messages 100000", "max_inflight_messages 1000",
                 "allow_anonymous false", "listener 1883", "listener 1884"):
        assert re.search(rf"^{re.escape(line)}\b", conf, re.M), line
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "deploy/mosquitto/site.conf" in ops


def test_kubernetes_pod_broker_conf_runs_in_real_mosquitto(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "tracker-sidecar.yaml").read_text()))
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["mosquitto.conf"]
    port = free_port()
    (tmp_path / "data").mkdir()
    conf = (conf.replace("listener 1883", f"listener {port} 127.0.0.1").replace("/mosquitto/data/", f"{tmp_path}/data/")
            + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
    (tmp_path / "m.conf").write_text(conf)
    proc = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "m.conf")], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "log").open("wb"))
    try:
        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False
        wait_until(listening, 20, "the pod's broker listening")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert (tmp_path / "data" / "mosquitto.db").exists()  # persistence works as configured


def _client(port: int, user: str, password: str, received: list | None = None) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}",
                    protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    if received is not None:
        c.on_message = lambda _c, _u, m: received.append(m.topic)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    return c


def test_site_conf_runs_in_real_mosquitto_and_its_acl_holds(tmp_path: Path) -> None:
    """site.conf as shipped, with only ports and paths moved into the test's folder."""
    devices_port, services_port = free_port(), free_port()
    passwd = tmp_path / "passwd"
    users = {"gateway": "gw-secret", "358756091234567": "dev-a", "358756099999994": "dev-b"}
    passwd.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True, timeout=30)
    shutil.copy(DEPLOY / "mosquitto" / "site.acl", tmp_path / "site.acl")
    conf = (site_conf()
            .replace("listener 1883", f"listener {devices_port} 127.0.0.1")
            .replace("listener 1884", f"listener {services_port} 127.0.0.1")
            .replace("/var/lib/mosquitto/", f"{tmp_path}/data/")
            .replace("/etc/mosquitto/passwd", str(passwd))
            .replace("/etc/mosquitto/site.acl", str(tmp_path / "site.acl")))
    (tmp_path / "data").mkdir()
    # as the test's own user: as root, Mosquitto would switch to "mosquitto" and not write here
    conf += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
    (tmp_path / "site.conf").write_text(conf)
    proc = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "site.conf")], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "mosquitto.log").open("wb"))
    clients: list[paho.Client] = []
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", services_port), timeout=0.5):
                    return True
            except OSError:
                return False
        wait_until(up, 20, "mosquitto with site.conf listening")
        got: list[str] = []
        gw = _client(services_port, "gateway", "gw-secret", got)
        clients.append(gw)
        wait_until(gw.is_connected, 20, "the gateway user connects")
        gw.subscribe("tracksolid/#", qos=1)
        time.sleep(0.3)  # the SUBACK: next publishes must be routed to this subscription
        dev = _client(devices_port, "358756091234567", "dev-a")
        clients.append(dev)
        wait_until(dev.is_connected, 20, "a device connects")
        dev.publish("tracksolid/358756099999994/location", b"{}", qos=1).wait_for_publish(10)  # another device's
        dev.publish("tracksolid/358756091234567/location", b"{}", qos=1).wait_for_publish(10)  # its own
        wait_until(lambda: "tracksolid/358756091234567/location" in got, 20, "the device's own message")
        assert got == ["tracksolid/358756091234567/location"]  # the other was denied by the ACL
        # anonymous and wrong-password clients are refused
        for user, password in (("", ""), ("gateway", "wrong")):
            codes: list = []
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            c.on_connect = lambda _c, _u, _f, rc, _p, codes=codes: codes.append(rc)
            if user:
                c.username_pw_set(user, password)
            c.connect("127.0.0.1", devices_port, keepalive=5)
            c.loop_start()
            clients.append(c)
            wait_until(lambda codes=codes: bool(codes), 20, "a CONNACK")
            assert codes[0].is_failure, (user, codes)
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        proc.terminate()
        proc.wait(timeout=20)
