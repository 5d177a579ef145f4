"""Fail fast at start (docs/operations.md, Exit codes): what can be known before connecting is checked
before connecting, and ``gateway run`` ends within seconds with a distinct exit code and one JSON event
naming the config key and the file or variable, never a secret. ``gateway validate`` runs the same checks."""

from __future__ import annotations

import datetime
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from brokers import Mosquitto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from service_harness import GATEWAY, POLICY, assert_json_lines, free_port

CANARY = "pw-CANARY-5150"  # the local broker's password: must never be printed


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key


def write_config(tmp: Path, cloud: str = "", top: str = "", local_url: str = "mqtt://127.0.0.1:9",
                 cloud_url: str = "mqtt://127.0.0.1:9", metrics: str = "127.0.0.1:0", keys_file: str = "keys.json",
                 ) -> Path:
    keys = tmp / "keys.json"
    if not keys.exists():
        subprocess.run([GATEWAY, "keygen", str(keys)], check=True, capture_output=True)
    (tmp / "local-pw").write_text(CANARY + "\n")
    path = tmp / "config.toml"
    path.write_text(
        f'policies = ["{POLICY}"]\nkeys_file = "{keys_file}"\n{top}\n'
        f'[local]\nurl = "{local_url}"\nusername = "site"\npassword_file = "local-pw"\n'
        f'[cloud]\nurl = "{cloud_url}"\n{cloud}\n'
        f'[spool]\npath = "{tmp / "spool.db"}"\n[metrics]\nlisten = "{metrics}"\n[log]\nformat = "json"\n'
    )
    return path


def run(config: Path, *args: str, timeout: float = 30) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = subprocess.run([GATEWAY, *args, "--config", str(config)], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def _broken(tmp: Path, case: str) -> tuple[Path, list[str]]:
    """A config broken in one way, and what the message must name."""
    if case == "password_env":
        return write_config(tmp, 'password_env = "GW_TEST_NEVER_SET_PW"'), ["[cloud]", "password_env",
                                                                             "GW_TEST_NEVER_SET_PW"]
    if case == "username_env":
        return write_config(tmp, 'username_env = "GW_TEST_NEVER_SET_USER"'), ["username_env", "GW_TEST_NEVER_SET_USER"]
    if case == "password_file":
        missing = tmp / "no" / "cloud-pw"
        return write_config(tmp, f'password_file = "{missing}"'), ["password_file", str(missing)]
    if case == "ca_file missing":
        missing = tmp / "absent-ca.pem"
        return write_config(tmp, f'ca_file = "{missing}"', cloud_url="mqtts://127.0.0.1:9"), ["ca_file", str(missing)]
    if case == "ca_file garbage":
        (tmp / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        return write_config(tmp, 'ca_file = "ca.pem"', cloud_url="mqtts://127.0.0.1:9"), ["ca_file", "ca.pem"]
    if case == "cert and key mismatch":
        _self_signed(tmp / "client.pem")
        (tmp / "client.key").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
        body = 'cert_file = "client.pem"\nkey_file = "client.key"'
        return write_config(tmp, body, cloud_url="mqtts://127.0.0.1:9"), ["cert_file", "client.pem", "client.key"]
    if case == "key file not base64":
        (tmp / "bad-keys.json").write_text('{"active": "k1", "keys": {"k1": "%%%not-base64%%%"}}')
        (tmp / "bad-keys.json").chmod(0o600)
        return write_config(tmp, keys_file="bad-keys.json"), ["keys_file", "bad-keys.json", "'k1'",
                                                                      "not valid base64"]
    if case == "key file not json":
        (tmp / "bad-keys.json").write_text("active=k1\n")
        (tmp / "bad-keys.json").chmod(0o600)
        return write_config(tmp, keys_file="bad-keys.json"), ["keys_file", "bad-keys.json", "not JSON"]
    if case == "gt06 allow-list missing":
        missing = tmp / "trackers.txt"
        top = f'\n[ingest.gt06]\nlisten = "127.0.0.1:0"\nallowed_imeis_file = "{missing}"\n'
        return write_config(tmp, cloud=top), ["allowed_imeis_file", str(missing)]
    if case == "spool folder is a file":
        (tmp / "afile").write_text("")
        config = write_config(tmp)
        config.write_text(config.read_text().replace(str(tmp / "spool.db"), str(tmp / "afile" / "spool.db")))
        return config, ["[spool] path", str(tmp / "afile")]
    if case == "key file missing":
        return write_config(tmp, keys_file="nowhere.json"), ["keys_file", "nowhere.json"]
    raise AssertionError(case)


CASES = ["password_env", "username_env", "password_file", "ca_file missing", "ca_file garbage",
         "cert and key mismatch", "key file not base64", "key file not json", "key file missing",
         "gt06 allow-list missing", "spool folder is a file"]


@pytest.mark.parametrize("case", CASES)
def test_run_exits_78_within_seconds_naming_the_key_and_file(tmp_path: Path, case: str) -> None:
    config, named = _broken(tmp_path, case)
    code, out, seconds = run(config, "run")
    assert code == 78, out
    assert seconds < 15
    (event,) = [e for e in assert_json_lines(out, "stderr") if e["event"] == "startup_failed"]
    for text in named:
        assert text in event["error"], (text, event)
    assert event["key"].split()[-1] in event["error"]
    assert "Error" not in event["error"].split(":")[-1]  # says what is wrong, not an exception class
    assert CANARY not in out

    code, out, _ = run(config, "validate")
    assert code == 78 and all(text in out for text in named) and CANARY not in out
    assert "FAIL" in out


def test_a_taken_metrics_port_exits_69_naming_address_and_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path, metrics=f"127.0.0.1:{port}")
        code, out, seconds = run(config, "run")
        assert code == 69 and seconds < 15, out
        (event,) = [e for e in assert_json_lines(out, "stderr") if e["event"] == "startup_failed"]
        assert f"127.0.0.1:{port}" in event["error"] and "[metrics] listen" in event["error"]
        code, out, _ = run(config, "validate")
        assert code == 0 and f"warn [metrics] listen: 127.0.0.1:{port}" in out


def test_a_taken_tracker_port_exits_69_naming_address_and_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path, cloud=f'\n[ingest.gt06]\nlisten = "127.0.0.1:{port}"\n',
                              local_url=f"mqtt://127.0.0.1:{free_port()}")
        code, out, seconds = run(config, "run")
        assert code == 69 and seconds < 30, out
        (event,) = [e for e in assert_json_lines(out, "stderr") if e["event"] == "startup_failed"]
        assert str(port) in event["error"] and "127.0.0.1" in event["error"]


def test_an_unloadable_config_is_one_json_event_and_78(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'password = "hunter2"')
    code, out, _ = run(config, "run")
    assert code == 78 and "unknown field `password`" in out and "hunter2" not in out
    assert [e["event"] for e in assert_json_lines(out, "stderr")] == ["startup_failed"]


def test_run_help_lists_the_exit_codes() -> None:
    out = subprocess.run([GATEWAY, "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert {int(c) for c in re.findall(r"(?:exit codes: |; )(\d+) ", out)} == {0, 2, 69, 70, 78}
    assert subprocess.run([GATEWAY, "run", "--config"], capture_output=True).returncode == 2


def test_validate_connect_tries_both_brokers(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> None:
    local, cloud = broker_pair
    config = write_config(tmp_path, local_url=local.url, cloud_url=cloud.url, metrics=f"127.0.0.1:{free_port()}")
    code, out, _ = run(config, "validate", "--connect")
    assert code == 0, out
    assert f"ok   [local] {local.url}" in out and f"ok   [cloud] {cloud.url}" in out
    cloud.stop()
    code, out, _ = run(config, "validate", "--connect")
    assert code == 1, out
    assert f"ok   [local] {local.url}" in out and f"FAIL [cloud] {cloud.url}" in out
    assert CANARY not in out


def test_validate_connect_reports_a_refused_login(tmp_path: Path) -> None:
    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "site", "the-right-one"], check=True,
                   capture_output=True)
    pwfile.chmod(0o644)
    with Mosquitto(tmp_path / "b", extra=f"allow_anonymous false\npassword_file {pwfile}") as b:
        config = write_config(tmp_path, local_url=b.url, cloud_url=b.url,
                              cloud='username = "site"\npassword_env = "GW_TEST_CLOUD_PW"')
        env_run = subprocess.run([GATEWAY, "validate", "--connect", "--config", str(config)], capture_output=True,
                                 text=True, timeout=60, env={**__import__("os").environ,
                                                             "GW_TEST_CLOUD_PW": "the-right-one"})
        out = env_run.stdout
        assert env_run.returncode == 1, out + env_run.stderr
        assert f"FAIL [local] {b.url}: refused" in out and f"ok   [cloud] {b.url}" in out
        assert CANARY not in out and "the-right-one" not in out


def test_operations_doc_exit_codes_and_log_examples_match() -> None:
    from service_harness import ROOT

    from gateway.service import preflight

    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc[doc.index("## Exit codes"):]
    table = {int(c) for c in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert table == {v for k, v in vars(preflight).items() if k.startswith("EX_")}
    help_text = subprocess.run([GATEWAY, "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert {int(c) for c in re.findall(r"(?:exit codes: |; )(\d+) ", help_text)} == table - {1}  # run never exits 1
    for block in re.findall(r"```json\n(.*?)```", doc, re.S):
        assert_json_lines(block, "docs/operations.md example")


def test_a_secret_gone_while_running_is_logged_with_its_key_and_file(tmp_path: Path) -> None:
    """Checked at start; if the file goes later, each reconnection's log line says which (never the value)."""
    from gateway.service.config import Endpoint
    from gateway.service.uplink import describe

    (tmp_path / "pw").write_text(CANARY + "\n")
    ep = Endpoint(url="mqtt://127.0.0.1:1", password_file=str(tmp_path / "pw"))
    assert ep.credentials() == (None, CANARY)
    (tmp_path / "pw").unlink()
    with pytest.raises(Exception) as info:
        ep.credentials()
    text = describe(info.value)
    assert "password_file" in text and str(tmp_path / "pw") in text and CANARY not in text
