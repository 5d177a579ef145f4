"""Changing a policy safely: signed packs, ``gateway diff``, shadow packs on a live gateway."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from brokers import Mosquitto
from service_harness import GATEWAY, POLICY, ROOT, Gateway, Publisher, Sink, wait_until

TRACKSOLID = ROOT / "rules" / "jimi-tracksolid.toml"


def gw(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATEWAY, *map(str, args)], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=60)


# -- signed packs ------------------------------------------------------------------------------


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(pack, its signing key, the key's .pub), the pack signed."""
    pack = tmp_path / "rules" / "service.toml"
    pack.parent.mkdir()
    pack.write_bytes(POLICY.read_bytes())
    key = tmp_path / "signer" / "s1.key"
    r = gw("keygen", "--signing", key)
    assert r.returncode == 0, r.stderr
    assert gw("sign", "--key", key, pack).returncode == 0
    return pack, key, Path(str(key) + ".pub")


def test_signing_key_pair_is_private_and_never_overwritten(signed: tuple[Path, Path, Path]) -> None:
    _pack, key, pub = signed
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    assert b"PRIVATE" not in pub.read_bytes()
    before = key.read_bytes()
    r = gw("keygen", "--signing", key)
    assert r.returncode != 0 and "never overwritten" in r.stderr
    assert key.read_bytes() == before


def test_check_accepts_a_signed_pack_and_names_the_signer(signed: tuple[Path, Path, Path]) -> None:
    pack, _key, pub = signed
    sig = json.loads(Path(str(pack) + ".sig").read_text())
    r = gw("check", "--trusted-key", pub, pack)
    assert r.returncode == 0, r.stderr
    assert f"signature ok {pack}: signed by key {sig['key_id']}" in r.stdout
    assert sig["file"] == "service.toml" and len(sig["key_id"]) == 16


def test_check_refuses_a_tampered_byte(signed: tuple[Path, Path, Path]) -> None:
    pack, _key, pub = signed
    data = bytearray(pack.read_bytes())
    i = data.index(b"grid_m = 1000") + len("grid_m = ")
    data[i] = ord("2")  # a 2 km grid: still a valid pack, but not the one that was signed
    pack.write_bytes(bytes(data))
    assert gw("check", pack).returncode == 0  # unsigned checking still passes
    r = gw("check", "--trusted-key", pub, pack)
    assert r.returncode != 0 and "does not match" in r.stderr


def test_check_refuses_an_untrusted_signer_and_a_missing_signature(signed: tuple[Path, Path, Path],
                                                                   tmp_path: Path) -> None:
    pack, _key, pub = signed
    other = tmp_path / "other.key"
    gw("keygen", "--signing", other)
    r = gw("check", "--trusted-key", f"{other}.pub", pack)
    assert r.returncode != 0 and "not trusted" in r.stderr
    Path(str(pack) + ".sig").unlink()
    r = gw("check", "--trusted-key", pub, pack)
    assert r.returncode != 0 and "not signed" in r.stderr


def test_check_refuses_a_renamed_pack_and_a_copied_signature(signed: tuple[Path, Path, Path]) -> None:
    pack, _key, pub = signed
    renamed = pack.with_name("renamed.toml")
    pack.rename(renamed)
    Path(str(pack) + ".sig").rename(str(renamed) + ".sig")
    r = gw("check", "--trusted-key", pub, renamed)
    assert r.returncode != 0 and "renamed or copied" in r.stderr


@pytest.mark.slow
def test_signing_key_rotation_trusts_both_keys_during_the_change(signed: tuple[Path, Path, Path],
                                                                 tmp_path: Path) -> None:
    pack, _key, pub = signed
    second = tmp_path / "rules" / "tracksolid.toml"
    second.write_bytes(TRACKSOLID.read_bytes())
    new_key = tmp_path / "signer" / "s2.key"
    gw("keygen", "--signing", new_key)
    gw("sign", "--key", new_key, second)
    both = gw("check", "--trusted-key", pub, "--trusted-key", f"{new_key}.pub", pack, second)
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("signature ok") == 2
    only_new = gw("check", "--trusted-key", f"{new_key}.pub", pack, second)  # the old key retired
    assert only_new.returncode != 0 and f"{pack}: signed by key" in only_new.stderr


def test_run_refuses_an_unsigned_pack_at_start_naming_it(tmp_path: Path, signed: tuple[Path, Path, Path]) -> None:
    pack, _key, pub = signed
    unsigned = tmp_path / "rules" / "unsigned.toml"
    unsigned.write_bytes(POLICY.read_bytes())
    gw("keygen", tmp_path / "k.json")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'policies = ["{pack}", "{unsigned}"]\ntrusted_policy_keys = ["{pub}"]\nkeys_file = "k.json"\n'
                   '[local]\nurl = "mqtt://127.0.0.1:1"\n[cloud]\nurl = "mqtt://127.0.0.1:1"\n[metrics]\nlisten = ""\n')
    r = gw("run", "--config", cfg)
    assert r.returncode != 0 and "unsigned.toml" in r.stderr and "not signed" in r.stderr


@pytest.mark.slow
def test_sighup_refuses_a_tampered_signed_pack_and_keeps_the_running_one(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto], signed: tuple[Path, Path, Path]
) -> None:
    local, cloud = broker_pair
    pack, key, pub = signed
    g = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[pack], extra=f'trusted_policy_keys = ["{pub}"]')
    sink, pub_client = Sink(cloud.url), Publisher(local.url)
    try:
        g.start()
        msg = msgspec.json.encode({"device_id": "dev-1", "seq": 1})
        pub_client.publish_all([("site/dev-1/telemetry", msg)])
        assert dict(sink.wait_for(1, 20)[0].properties.UserProperty)["policy_version"] == "2.1.0"
        pack.write_text(pack.read_text().replace('version = "2.1.0"', 'version = "6.6.6"'))  # unsigned edit
        g.signal(signal.SIGHUP)
        wait_until(lambda: g.metric("gateway_policy_reloads_total", result="refused") == 1, 20, "reload refused")
        assert "does not match" in g.log_text()
        pub_client.publish_all([("site/dev-1/telemetry", msg)])
        assert dict(sink.wait_for(2, 20)[1].properties.UserProperty)["policy_version"] == "2.1.0"
        gw("sign", "--key", key, pack)  # the reviewer signs the change: now it is adopted
        g.signal(signal.SIGHUP)
        wait_until(lambda: g.metric("gateway_policy_reloads_total", result="ok") == 1, 20, "reload ok")
        pub_client.publish_all([("site/dev-1/telemetry", msg)])
        assert dict(sink.wait_for(3, 20)[2].properties.UserProperty)["policy_version"] == "6.6.6"
    finally:
        pub_client.close()
        sink.close()
        g.close()


# -- gateway diff ------------------------------------------------------------------------------

IMEI = "358756091234567"


def _lines(path: Path, messages: list[tuple[str, dict]]) -> Path:
    path.write_text("".join(json.dumps({"topic": t, "payload": p}) + "\n" for t, p in messages))
    return path


def _variant(tmp_path: Path, name: str, old: str, new: str, base: Path = POLICY) -> Path:
    text = base.read_text()
    assert old in text
    out = tmp_path / name
    out.write_text(text.replace(old, new, 1))
    return out


def _diff(*args: str | Path) -> tuple[int, dict]:
    r = gw("diff", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_diff_of_a_policy_with_itself_changes_nothing(tmp_path: Path) -> None:
    data = _lines(tmp_path / "in.jsonl", [("site/dev-1/telemetry", {"device_id": "dev-1", "seq": 1, "lat": 12.9716,
                                                                    "lon": 77.5946})] * 3)
    rc, report = _diff(POLICY, POLICY, "--input", data)
    assert rc == 0 and report["messages"] == 3 and report["changed_messages"] == 0 and report["changes"] == []


def test_diff_names_each_kind_of_change_by_path_and_rule(tmp_path: Path) -> None:
    msgs = [
        ("site/dev-1/telemetry", {"device_id": "dev-1", "seq": 1, "battery": 80}),
        ("site/dev-2/telemetry", {"device_id": "dev-2", "seq": 2, "email": "asha@example.com"}),
        ("site/dev-3/telemetry", {"device_id": "dev-3", "pin": "1234"}),
    ]
    data = _lines(tmp_path / "in.jsonl", msgs)
    # seq: keep -> drop (removed); battery newly declared (added); pin no longer a drop reason (now forwarded)
    new = _variant(tmp_path, "new.toml", 'path = "seq"\nop = "keep"\ntype = "integer"', 'path = "seq"\nop = "drop"')
    new = _variant(tmp_path, "new2.toml", '[[drop_when]]\npath = "pin"\npresent = true',
                   '[[drop_when]]\npath = "pin"\nequals = "never"', base=new)
    new.write_text(new.read_text().replace("[[test]]", '[[field]]\npath = "battery"\nop = "keep"\n\n[[test]]', 1))
    rc, report = _diff(POLICY, new, "--input", data)
    rows = {(c["path"], c["kind"]): c for c in report["changes"]}
    assert rc == 1 and report["messages"] == 3 and report["changed_messages"] == 3
    assert set(rows) == {("seq", "removed"), ("battery", "added"), ("*", "now_forwarded")}
    assert rows[("seq", "removed")]["rule"] == "keep -> drop" and rows[("seq", "removed")]["messages"] == 2
    assert (
        rows[("seq", "removed")]["examples"][0]["old"] == 1 and rows[("seq", "removed")]["examples"][0]["new"] is None
    )
    assert rows[("battery", "added")]["rule"] == "undeclared -> keep"
    assert rows[("battery", "added")]["examples"][0]["new"] == 80
    assert rows[("*", "now_forwarded")]["rule"] == "credential:pin"  # the old drop reason and its rule
    assert "1234" not in json.dumps(report) and "asha" not in json.dumps(report)


def test_diff_counts_a_grid_change_and_shows_only_minimised_values(tmp_path: Path) -> None:
    msgs = [(f"tracksolid/{IMEI}/location", {"imei": IMEI, "latitude": 12.971598 + i / 1000, "longitude": 77.594562,
                                             "time": "2026-01-15T06:00:01Z"}) for i in range(5)]
    msgs.append((f"tracksolid/{IMEI}/heartbeat", {"imei": IMEI, "battery": 80}))
    data = _lines(tmp_path / "in.jsonl", msgs)
    new = _variant(tmp_path, "grid.toml", "grid_m = 1000", "grid_m = 500", base=TRACKSOLID)
    r = gw("diff", TRACKSOLID, new, "--input", data)
    assert r.returncode == 1
    assert "6 messages, 5 change" in r.stdout
    assert IMEI not in r.stdout and "12.971598" not in r.stdout  # examples are minimised, never raw
    _rc, report = _diff(TRACKSOLID, new, "--input", data)
    kinds = {(c["path"], c["kind"]) for c in report["changes"]}
    assert kinds == {("latitude", "value_changed"), ("longitude", "value_changed")}
    example = report["changes"][0]["examples"][0]
    assert example["old"] != example["new"] and IMEI not in json.dumps(report)


def test_diff_reports_topic_changes_and_drops(tmp_path: Path) -> None:
    data = _lines(tmp_path / "in.jsonl", [("site/dev-1/telemetry", {"device_id": "dev-1", "seq": 1})])
    moved = _variant(tmp_path, "moved.toml", 'upstream = "cloud/{device}/telemetry"', 'upstream = "v2/{device}/t"')
    moved.write_text(moved.read_text().split("[[test]]")[0])  # its inline tests name the old topic
    _rc, report = _diff(POLICY, moved, "--input", data)
    (row,) = report["changes"]
    assert row["kind"] == "topic_changed" and row["examples"][0]["new_topic"].startswith("v2/")
    assert "dev-1" not in json.dumps(report)
    dropping = _variant(tmp_path, "drop.toml", '[[drop_when]]\npath = "pin"\npresent = true',
                        '[[drop_when]]\npath = "seq"\npresent = true')
    dropping.write_text(dropping.read_text().split("[[test]]")[0])
    _rc, report = _diff(POLICY, dropping, "--input", data)
    assert [(c["path"], c["kind"]) for c in report["changes"]] == [("*", "now_dropped")]


def test_simulator_dump_feeds_diff(tmp_path: Path) -> None:
    dump = tmp_path / "wk.jsonl"
    r = subprocess.run([sys.executable, "-m", "devices.simulate", "--system", "jimi-tracksolid", "--dump", str(dump),
                        "--count", "50"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = dump.read_text().splitlines()
    assert len(lines) == 50 and all(json.loads(line)["topic"].startswith("tracksolid/") for line in lines)
    rc, report = _diff(TRACKSOLID, TRACKSOLID, "--input", dump)
    assert rc == 0 and report["messages"] == 50 and report["bad_lines"] == 0


# -- shadow packs on a live gateway --------------------------------------------------------------


@pytest.mark.slow
def test_shadow_pack_counts_differences_and_forwards_nothing(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = broker_pair
    candidate = _variant(tmp_path, "candidate.toml", "grid_m = 1000", "grid_m = 250")
    candidate.write_text(candidate.read_text().replace('name = "service-test"', 'name = "service-candidate"', 1))
    g = Gateway(tmp_path / "gw", local.url, cloud.url, extra=f'shadow_policies = ["{candidate}"]')
    sink, pub = Sink(cloud.url), Publisher(local.url)
    try:
        g.start()
        located = [("site/dev-1/telemetry", msgspec.json.encode({"device_id": "dev-1", "seq": i,
                                                                 "lat": 12.971598, "lon": 77.594562}))
                   for i in range(10)]
        plain = [("site/dev-2/telemetry", msgspec.json.encode({"device_id": "dev-2", "seq": i})) for i in range(5)]
        pub.publish_all(located + plain)
        got = sink.wait_for(15, 30)
        wait_until(lambda: g.metric("gateway_shadow_messages_total", policy="service-candidate") == 15, 20,
                   "shadow saw every message")
        assert g.metric("gateway_shadow_differences_total", policy="service-candidate", kind="value_changed") == 10
        assert g.metric("gateway_shadow_errors_total") == 0
        assert len(sink.snapshot()) == 15 and len(got) == 15  # nothing forwarded twice
        assert {dict(m.properties.UserProperty)["policy"] for m in got} == {"service-test"}
        assert "dev-1" not in g.metrics() and "12.971598" not in g.metrics()
    finally:
        pub.close()
        sink.close()
        g.close()


# -- key rotation without a flag day ---------------------------------------------------------------


@pytest.mark.slow
def test_rotation_records_the_previous_key_and_retire_refuses_the_active_one(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    assert gw("keygen", keys).returncode == 0
    assert gw("keygen", "--rotate", keys).returncode == 0
    doc = json.loads(keys.read_text())
    assert doc["active"] == "k2" and doc["previous"] == "k1" and doc["rotated_at"] > 0
    r = gw("keygen", "--retire", "k2", keys)
    assert r.returncode == 2 and "active key" in r.stderr
    assert set(json.loads(keys.read_text())["keys"]) == {"k1", "k2"}
    assert gw("keygen", "--retire", "k1", keys).returncode == 0
    doc = json.loads(keys.read_text())
    assert set(doc["keys"]) == {"k2"} and "previous" not in doc
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert gw("keygen", "--rotate", keys).returncode == 0
    assert json.loads(keys.read_text())["active"] == "k3"  # a retired id is never reused


def test_engine_gives_each_device_its_pseudonym_under_the_previous_key(tmp_path: Path) -> None:
    from gateway.keys import Keyring
    from gateway.pipeline import Engine, Forward
    from gateway.policy.load import load

    keys = tmp_path / "keys.json"
    gw("keygen", keys)
    source = [load(TRACKSOLID)]
    topic = f"tracksolid/{IMEI}/location"
    payload = msgspec.json.encode({"imei": IMEI, "latitude": 12.9, "longitude": 77.5, "time": "2026-01-15T06:00:01Z"})
    before = Engine(source, Keyring.from_file(keys)).process(topic, payload)
    assert Engine(source, Keyring.from_file(keys)).previous_device(topic) is None  # never rotated
    gw("keygen", "--rotate", keys)
    engine = Engine(source, Keyring.from_file(keys))
    after = engine.process(topic, payload)
    assert isinstance(before, Forward) and isinstance(after, Forward)
    old_level, new_level = before.topic.split("/")[2], after.topic.split("/")[2]
    assert old_level.startswith("k1.") and new_level.startswith("k2.") and old_level != new_level
    assert engine.previous_device(topic) == old_level


@pytest.mark.slow
def test_transition_links_old_and_new_pseudonyms_at_the_cloud(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = broker_pair
    g = Gateway(tmp_path / "gw", local.url, cloud.url, extra="[keys]\ntransition_s = 3600")
    sink, pub = Sink(cloud.url), Publisher(local.url)
    msg = msgspec.json.encode({"device_id": "dev-1", "seq": 1})
    try:
        g.start()
        pub.publish_all([("site/dev-1/telemetry", msg)])
        first = sink.wait_for(1, 20)[0]
        assert "previous_device" not in dict(first.properties.UserProperty)  # no rotation yet
        assert gw("keygen", "--rotate", g.keys).returncode == 0
        g.signal(signal.SIGHUP)
        wait_until(lambda: g.metric("gateway_policy_reloads_total", result="ok") == 1, 20, "reload ok")
        pub.publish_all([("site/dev-1/telemetry", msg)])
        second = sink.wait_for(2, 20)[1]
        props = dict(second.properties.UserProperty)
        assert props["key_id"] == "k2" and second.topic != first.topic
        assert props["previous_device"] == first.topic.split("/")[1]  # the pseudonym the cloud knew
        events = [json.loads(line) for line in g.log_text().splitlines() if line.startswith("{")]
        transition = [e for e in events if e.get("event") == "key_transition"]
        assert transition and transition[-1]["key_id"] == "k2" and transition[-1]["previous_key_id"] == "k1"
        assert [e["key_id"] for e in events if e.get("event") == "policy_reloaded"] == ["k2"]
    finally:
        pub.close()
        sink.close()
        g.close()
