"""What an operator does to a running gateway: configure it, reload it, feed it consent,
read its dead letters, watch /readyz. Real brokers and the real console script."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import msgspec
import pytest
from brokers import Mosquitto
from service_harness import GATEWAY, POLICY, ROOT, Gateway, Publisher, Sink, assert_json_lines, free_port, wait_until

from gateway.service.config import Config, ConfigError, Endpoint, load_config


def pseudonym_topic(gw: Gateway, device: str) -> str:
    """The upstream topic ``gateway minimise`` gives ``device`` with this gateway's key."""
    line = json.dumps({"topic": f"site/{device}/telemetry", "payload": {"device_id": device, "seq": 0}})
    out = subprocess.run([GATEWAY, "minimise", "--keys", str(gw.keys), "--policy", str(POLICY)],
                         input=line.encode(), capture_output=True, check=True).stdout
    return json.loads(out)["topic"]


MSG = {"device_id": "dev-1", "seq": 1, "lat": 12.971598, "lon": 77.594562, "ip": "203.0.113.77"}


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('policies = ["p.toml"]\n' + body)
    return path


LOCAL = '[local]\nurl = "mqtt://127.0.0.1:1883"\n'


def test_sample_config_loads_and_resolves_paths() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.policies[0] == str(ROOT / "rules" / "jimi-tracksolid.toml")
    assert all(Path(p).exists() for p in cfg.policies)
    assert cfg.spool.path == str(ROOT / ".gateway" / "spool.db")
    assert cfg.metrics.address() == ("127.0.0.1", 9108)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (LOCAL + '[cloud]\nurl = "mqtt://cloud.example.com:1883"\n', "allow_insecure"),
        (LOCAL + '[cloud]\nurl = "mqtt://user:pw@127.0.0.1:1883"\n', "must not carry credentials"),
        (LOCAL + '[cloud]\nurl = "http://127.0.0.1"\n', "mqtt:// or mqtts://"),
        (LOCAL + '[cloud]\nurl = "mqtts://c.example"\ncert_file = "c.pem"\n', "go together"),
        (LOCAL + '[cloud]\nurl = "mqtt://127.0.0.1"\npassword = "hunter2"\n', "unknown field `password`"),
        (LOCAL + '[cloud]\nurl = "mqtt://127.0.0.1"\n[spool]\nmax_bytes = 10\n', "at least 1 MiB"),
        (LOCAL + '[cloud]\nurl = "mqtt://127.0.0.1"\n[consent]\ntopic = "consent/{device}"\n', "{purpose}"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        load_config(_config(tmp_path, body))
    assert "hunter2" not in str(info.value) and "pw@" not in str(info.value)


def test_insecure_cloud_allowed_only_when_said(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, LOCAL + '[cloud]\nurl = "mqtt://cloud.example.com"\nallow_insecure = true\n'))
    assert cfg.cloud.port == 1883 and not cfg.cloud.tls
    tls = load_config(_config(tmp_path, LOCAL + '[cloud]\nurl = "mqtts://cloud.example.com"\n'))
    assert tls.cloud.port == 8883 and tls.cloud.tls_context() is not None


def test_credentials_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret-from-file\n")
    cfg = load_config(
        _config(tmp_path, LOCAL + '[cloud]\nurl = "mqtt://127.0.0.1"\nusername = "site-7"\npassword_file = "pw"\n')
    )
    assert cfg.cloud.credentials() == ("site-7", "s3cret-from-file")
    cfg = load_config(
        _config(tmp_path, LOCAL + '[cloud]\nurl = "mqtt://127.0.0.1"\nusername_env = "U"\npassword_env = "P"\n')
    )
    with pytest.raises(ConfigError, match=r"P .password_env. is not set"):
        cfg.cloud.credentials()
    monkeypatch.setenv("U", "site-8")
    monkeypatch.setenv("P", "s3cret-from-env")
    assert cfg.cloud.credentials() == ("site-8", "s3cret-from-env")


@pytest.mark.slow
def test_run_refuses_bad_config_and_failing_policy(tmp_path: Path) -> None:
    bad = _config(tmp_path, LOCAL + '[cloud]\nurl = "mqtt://cloud.example.com"\n')
    r = subprocess.run([GATEWAY, "run", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "allow_insecure" in r.stderr
    failing = tmp_path / "p.toml"
    failing.write_text(POLICY.read_text().replace("ot4y376hjtyp4gtk", "wrongwrongwrong1"))
    subprocess.run([GATEWAY, "keygen", str(tmp_path / "k.json")], check=True, capture_output=True)
    cfg = _config(tmp_path, f'keys_file = "k.json"\n{LOCAL}[cloud]\nurl = "mqtt://127.0.0.1"\n[metrics]\nlisten = ""\n')
    r = subprocess.run([GATEWAY, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "inline test" in r.stderr


@pytest.fixture
def site(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]):
    local, cloud = broker_pair
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text())
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, policies=[policy], extra='dead_letter = "gateway/dead-letter"')
    sink = Sink(cloud.url)
    pub = Publisher(local.url)
    yield local, cloud, gw, sink, pub, policy
    pub.close()
    sink.close()
    gw.close()


def test_sighup_reload_adopts_a_good_policy_and_refuses_a_bad_one(site) -> None:
    _local, _cloud, gw, sink, pub, policy = site
    gw.start()
    pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode(MSG))])
    first = sink.wait_for(1, 20)[0]
    assert dict(first.properties.UserProperty)["policy_version"] == "2.1.0"

    policy.write_text(policy.read_text().replace('version = "2.1.0"', 'version = "2.2.0"'))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.metric("gateway_policy_reloads_total", result="ok") == 1, 20, "reload ok")
    pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode(MSG))])
    second = sink.wait_for(2, 20)[1]
    assert dict(second.properties.UserProperty)["policy_version"] == "2.2.0"

    policy.write_text(policy.read_text().replace("ot4y376hjtyp4gtk", "wrongwrongwrong1").replace("2.2.0", "9.9.9"))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.metric("gateway_policy_reloads_total", result="refused") == 1, 20, "reload refused")
    pub.publish_all([("site/dev-1/telemetry", msgspec.json.encode(MSG))])
    third = sink.wait_for(3, 20)[2]
    assert dict(third.properties.UserProperty)["policy_version"] == "2.2.0"  # the old one stays
    assert "policy_reload_refused" in gw.log_text()
    assert 'version="2.2.0"' in gw.metrics()


@pytest.mark.slow
def test_the_sample_config_runs_against_one_local_mosquitto(tmp_path: Path, broker: Mosquitto) -> None:
    """config.toml as shipped (one broker as site and cloud), only its port and paths moved here."""
    text = (ROOT / "config.toml").read_text()
    assert text.count('"mqtt://127.0.0.1:1883"') == 2
    subprocess.run([GATEWAY, "keygen", str(tmp_path / ".gateway" / "keys.json")], check=True, capture_output=True)
    port = free_port()
    text = (text.replace("127.0.0.1:1883", f"127.0.0.1:{broker.port}").replace("127.0.0.1:9108", f"127.0.0.1:{port}")
            .replace('"rules/', f'"{ROOT}/rules/'))
    (tmp_path / "config.toml").write_text(text)
    fleet = Sink(broker.url, topic="fleet/#", client_id="fleet-view")
    pub = Publisher(broker.url)
    proc = subprocess.Popen([GATEWAY, "run", "--config", str(tmp_path / "config.toml")], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _http_ok(port, "/readyz"), 30, "the sample config's gateway ready")
        imei = "358756091234567"
        pub.publish_all([(f"tracksolid/{imei}/location", b'{"imei":"358756091234567","latitude":12.971598,'
                                                          b'"longitude":77.594562}')])
        (got,) = fleet.wait_for(1, 20)
        assert imei not in got.topic and imei.encode() not in got.payload
        assert (tmp_path / ".gateway" / "spool.db").exists()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        assert_json_lines(proc.stderr.read().decode(), "stderr")  # format "auto", not a terminal: JSON lines
        fleet.close()
        pub.close()


def _http_ok(port: int, path: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_configuration_doc_example_loads_and_documents_every_key(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert example is not None
    (tmp_path / "c.toml").write_text(example.group(1))
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.cloud.tls and cfg.cloud.cert_file and cfg.ingest.gt06.listen == "0.0.0.0:5023"
    structs = [Config, Endpoint, type(cfg.spool), type(cfg.metrics), type(cfg.log), type(cfg.consent),
               type(cfg.reconnect), type(cfg.ingest.gt06), type(cfg.ingest.jt808), type(cfg.keys)]
    for struct in structs:
        for name in struct.__struct_fields__:
            if name != "path" or struct is not Config:
                assert any(f in doc for f in (f"`{name}`", f".{name}`", f"[{name}", f".{name}]")), \
                    f"{struct.__name__}.{name} undocumented"


@pytest.mark.slow
def test_readyz_follows_the_local_broker_and_secrets_stay_out_of_logs(
    tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]
) -> None:
    local, cloud = broker_pair
    (tmp_path / "pw").write_text("pw-CANARY-91\n")
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, extra='[ingest.gt06]\nlisten = "127.0.0.1:0"')
    gw.config.write_text(gw.config.read_text().replace(
        '[cloud]\n', f'[cloud]\nusername = "site"\npassword_file = "{tmp_path / "pw"}"\n'))
    try:
        gw.start()
        page = gw.metrics()
        ops = (ROOT / "docs" / "operations.md").read_text()
        table = ops[ops.index("## Metrics"):ops.index("## Logs")]
        documented = set(re.findall(r"`(gateway_[a-z0-9_]+)`", table))
        assert len(documented) > 20
        for name in documented:
            assert f"# TYPE {name} " in page or f"# TYPE {name.removesuffix('_total')} " in page, name
        # and the other way: every gateway metric on the live page is documented (a counter's
        # TYPE line names it without _total; an info metric's carries _info).
        shown = re.findall(r"^# TYPE (gateway_[a-z0-9_]+) ", page, re.M)
        assert [n for n in shown if not {n, f"{n}_total", n.removesuffix("_info")} & documented] == []
        local.stop()
        wait_until(lambda: gw.http("/readyz")[0] == 503, 20, "not ready without the local broker")
        assert gw.http("/healthz")[0] == 200
        local.start()
        wait_until(lambda: gw.http("/readyz")[0] == 200, 30, "ready again")
        assert "pw-CANARY-91" not in gw.log_text() and "pw-CANARY-91" not in gw.metrics()
        assert gw.stop() == 0
    finally:
        gw.close()


def test_logged_errors_carry_text_only_for_connection_errors() -> None:
    """Any other exception's text could quote a topic or a payload."""
    import aiomqtt

    from gateway.service.uplink import describe

    assert describe(UnicodeDecodeError("utf-8", b"site/CANARY\xff", 11, 12, "invalid")) == "UnicodeDecodeError"
    assert describe(ValueError("payload CANARY-7")) == "ValueError"
    assert (
        describe(ConnectionRefusedError(111, "Connection refused"))
        == "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert describe(aiomqtt.MqttError("Disconnected during message iteration")).endswith("message iteration")
