"""The offline CLI contract: commands, exit codes and output shapes (docs/policy.md)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent
POLICY = str(ROOT / "rules" / "jimi-tracksolid.toml")
TOPIC = "tracksolid/358756091234562/location"


def gateway(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    exe = Path(sys.executable).with_name("gateway")
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_passes_on_bundled_policies():
    result = gateway("check", *map(str, sorted((ROOT / "rules").glob("*.toml"))))
    assert result.returncode == 0, result.stderr
    assert re.search(r"jimi-tracksolid.toml: (\d+)/\1 inline tests passed", result.stdout), result.stdout


def test_check_exit_1_on_failing_test(tmp_path):
    text = Path(POLICY).read_text().replace('expect = { acc = false }', 'expect = { acc = true }')
    bad = tmp_path / "p.toml"
    bad.write_text(text)
    result = gateway("check", str(bad))
    assert result.returncode == 1
    assert "invalid login address is removed" in result.stderr and "output differs" in result.stderr


def test_check_exit_2_with_file_line_and_path(tmp_path):
    lines = Path(POLICY).read_text().splitlines()
    n = lines.index('path = "speed_kmh"')
    lines[n + 2] = 'step = "five"'  # the op line is n+1, step n+2
    bad = tmp_path / "p.toml"
    bad.write_text("\n".join(lines))
    result = gateway("check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:{n + 3}: field[" in result.stderr and "].step" in result.stderr


def test_check_exit_2_on_toml_syntax(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[policy\nname = 1\n")
    result = gateway("check", str(bad))
    assert result.returncode == 2 and f"{bad}:1:" in result.stderr


def test_minimise_stdin_to_stdout_and_reasons_to_stderr(tmp_path):
    lines = "\n".join([
        json.dumps({"topic": TOPIC, "payload": {"login_ip": "198.51.100.23", "secret_vendor_field": "CANARYzzq"}}),
        json.dumps({"topic": "unrouted/topic", "payload": {"a": 1}}),
        "not json at all",
    ])  # fmt: skip
    result = gateway("minimise", "--test-keys", "--policy", POLICY, stdin=lines)
    assert result.returncode == 0
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert out == [{"topic": "fleet/tracksolid/35875609-test.7eeittrju6t7rglj/location",
                    "payload": {"login_ip": "198.51.100.0"}}]
    errors = [json.loads(x) for x in result.stderr.splitlines()]
    assert [e["reason"] for e in errors] == ["no_route", "bad_wrapper"]
    assert "CANARY" not in result.stdout + result.stderr


def test_minimise_with_topic_prints_payload_only():
    result = gateway("minimise", "--test-keys", "--policy", POLICY, "--topic", TOPIC,
                     stdin='{"latitude": "x"}\n{"acc": true}\n')
    assert [json.loads(x) for x in result.stdout.splitlines()] == [{"acc": True}]
    assert json.loads(result.stderr) == {"dropped": True, "reason": "wrong_type", "policy": "jimi-tracksolid",
                                         "detail": "latitude"}


def test_minimise_without_keys_is_refused(monkeypatch):
    env = {k: "" for k in ("GATEWAY_KEYS_FILE", "GATEWAY_KEYS")}
    result = gateway("minimise", "--policy", POLICY, "--topic", TOPIC, stdin="{}", env=env)
    assert result.returncode == 2 and "no keys" in result.stderr


def test_explain_json_shape():
    message = {"imei": "358756091234562", "login_ip": "203.0.113.77", "peers": [{"id": 1}, {"id": 2}]}
    result = gateway(
        "explain", "--test-keys", "--json", "--policy", POLICY, "--topic", TOPIC, stdin=json.dumps(message)
    )
    report = json.loads(result.stdout)
    assert {"input", "output", "dropped", "reason", "fields"} <= report.keys()
    assert report["input"] == message and report["dropped"] is False and report["reason"] is None
    assert report["output"] == {"imei": "35875609-test.7eeittrju6t7rglj", "login_ip": "203.0.113.0"}
    fields = {f["path"]: f for f in report["fields"]}
    assert set(fields) == {"imei", "login_ip", "peers[].id"}  # one entry per input path, [] for arrays
    assert fields["imei"]["action"] == "pseudonymise" and fields["imei"]["why"].startswith("Tracksolid 1.2")
    assert fields["login_ip"]["action"] == "truncate_ip"
    assert fields["peers[].id"]["action"] == "drop" and "fail closed" in fields["peers[].id"]["why"]


def test_explain_shows_why_a_message_was_dropped():
    result = gateway("explain", "--test-keys", "--json", "--policy", POLICY, "--topic", "tracksolid/1/alarm",
                     stdin='{"time": "card 4111 1111 1111 1111"}')
    report = json.loads(result.stdout)
    assert report["dropped"] is True and report["reason"] == "leak"
    assert report["rule"] == "time" and report["detail"] == "card"
    assert "4111" not in json.dumps({k: v for k, v in report.items() if k != "input"})


def test_bench_json(tmp_path):
    data = tmp_path / "m.jsonl"
    data.write_text('{"imei":"358756091234562","latitude":12.9,"longitude":77.6,"login_ip":"10.1.2.3"}\n')
    result = gateway("bench", "--policy", POLICY, "--topic", TOPIC, "--input", str(data), "--seconds", "0.2", "--json")
    report = json.loads(result.stdout)
    assert set(report) >= {"messages", "seconds", "msgs_per_s"}
    assert report["messages"] > 0 and report["seconds"] >= 0.2
    assert report["msgs_per_s"] == pytest.approx(report["messages"] / report["seconds"], rel=0.01)


def test_keygen_mode_rotate_and_reveal_round_trip(tmp_path):
    keys = tmp_path / "keys.json"
    assert main(["keygen", str(keys)]) == 0
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert gateway("keygen", str(keys)).returncode == 2  # never overwrites
    first = json.loads(keys.read_text())
    assert first["active"] == "k1" and len(first["keys"]) == 1
    minimised = gateway("minimise", "--keys", str(keys), "--policy", POLICY, "--topic", "tracksolid/1/heartbeat",
                        stdin='{"sos_numbers": ["+919876543210"]}\n')
    token = json.loads(minimised.stdout)["sos_numbers"][0]
    assert token.startswith("enc.k1.") and "9876543210" not in token
    assert main(["keygen", "--rotate", str(keys)]) == 0
    rotated = json.loads(keys.read_text())
    assert rotated["active"] == "k2" and rotated["keys"]["k1"] == first["keys"]["k1"]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    revealed = gateway("reveal", "--keys", str(keys), token)  # old key id still resolves
    assert revealed.returncode == 0 and revealed.stdout.strip() == "+919876543210"
    other = tmp_path / "other.json"
    main(["keygen", str(other)])
    wrong = gateway("reveal", "--keys", str(other), token)
    assert wrong.returncode == 1 and "+91" not in wrong.stdout + wrong.stderr


def test_keys_from_environment(tmp_path):
    keys = tmp_path / "keys.json"
    main(["keygen", str(keys)])
    by_file = gateway("minimise", "--policy", POLICY, "--topic", TOPIC, stdin='{"imei": "358756091234562"}',
                      env={"GATEWAY_KEYS_FILE": str(keys), "GATEWAY_KEYS": ""})
    by_json = gateway("minimise", "--policy", POLICY, "--topic", TOPIC, stdin='{"imei": "358756091234562"}',
                      env={"GATEWAY_KEYS_FILE": "", "GATEWAY_KEYS": keys.read_text()})
    assert by_file.stdout == by_json.stdout and by_file.stdout.startswith('{"imei":"35875609-k1.')
    secret = json.loads(keys.read_text())["keys"]["k1"]
    assert secret not in by_file.stdout + by_file.stderr


def test_decode_gt06_ack_vector():
    result = gateway("decode", "gt06", "78780D01012345678901234500018CDD0D0A")
    frame = json.loads(result.stdout)
    assert result.returncode == 0
    assert frame["type"] == "login" and frame["imei"] == "123456789012345" and frame["ack"] == "787805010001D9DC0D0A"
    assert gateway("decode", "gt06", "78780D01012345678901234500018CDE0D0A").returncode == 1


def test_offline_demo_runs():
    result = gateway("demo", "--offline")
    assert result.returncode == 0 and "jimi-tracksolid" in result.stdout and "DROPPED: leak" in result.stdout


def test_live_demo_shows_every_system_end_to_end():
    """The README's main command: brokers, gateway, simulators, and what the cloud received."""
    result = gateway("demo", "--count", "60")
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    for system in (
        "jimi-tracksolid",
        "jimi-wifikit",
        "mijack-power-inlock",
        "smartjac",
        "smartlocker-jenix",
        "jimi-gt06",
    ):
        assert f"-- {system}:" in out
    assert out.count("   out  ") >= 15 and "DROPPED:" in out
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines() if line.startswith("   jimi-") or
            line.startswith("   mijack") or line.startswith("   smart")}
    assert {k: int(v[0]) for k, v in rows.items() if k != "jimi-tracksolid"} == dict.fromkeys(
        ("jimi-wifikit", "mijack-power-inlock", "smartjac", "smartlocker-jenix"), 60)
    assert int(rows["jimi-tracksolid"][0]) == 60 + 20 * 11  # MQTT trackers + GT06 (login + 10 frames each)
    assert all(int(i) == int(o) + int(d) for i, o, d in rows.values())  # every message accounted for
    # what the cloud received never carries a raw IMEI (15 digits, Luhn) or a VPA
    lines = out.splitlines()
    shown = "\n".join(line + lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("   out"))
    def imeis(text: str) -> set[str]:  # 15 digits, Luhn-valid (checked here, not with the gateway's detector)
        def luhn(d: str) -> bool:
            total = sum(int(c) if i % 2 == 0 else sum(divmod(2 * int(c), 10)) for i, c in enumerate(reversed(d)))
            return total % 10 == 0
        return {m for m in re.findall(r"(?<!\d)\d{15}(?!\d)", text) if luhn(m)}

    assert imeis(out.split("== Load")[0])  # the devices did send raw IMEIs...
    assert not imeis(shown)  # ...and none reached the cloud
