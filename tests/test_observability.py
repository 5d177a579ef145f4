"""The alerting rules and the dashboard, checked by the real tools: promtool's unit tests,
a live gateway's /metrics (every metric they read exists), and a real Prometheus that
scrapes a live gateway and fires GatewayCloudDisconnected when the cloud broker stops."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from brokers import Mosquitto
from prometheus_client.parser import text_string_to_metric_families
from service_harness import Gateway, Publisher, Sink, wait_until
from test_service import traffic

from gateway.mosquitto import free_port

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway.json"
# Served only by the supervisor of `--workers N` (tests/test_metrics_ops.py checks it there),
# or added by features that land separately; an alert on an absent series simply stays quiet.
NOT_ON_A_SINGLE_WORKER = {"gateway_worker_up", "gateway_worker_restarts_total", "gateway_config_last_reload_success"}
METRIC = re.compile(r"\b((?:gateway|process|python)_[a-z0-9_]+)\b")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run .ci/setup (Debian package prometheus)"
    return path


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return exprs


def concrete(expr: str) -> str:
    """A dashboard query as Grafana would send it."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace(
        "label_values(gateway_build_info, instance)", "gateway_build_info")


def exported_names(page: str) -> set[str]:
    """Sample names a query can use, including those of families with no child yet (# TYPE only)."""
    names = set()
    for family in text_string_to_metric_families(page):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
        names |= {family.name, *(family.name + s for s in suffixes.get(family.type, ()))}
        names |= {s.name for s in family.samples}
    return names


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROM_DIR, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM_DIR, capture_output=True,
                          text=True, timeout=120)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    # every alert the issue asks for has a rule and a unit test
    tests = (PROM_DIR / "alerts_test.yml").read_text()
    for name in ("GatewayCloudDisconnected", "GatewaySpoolFilling", "GatewaySpoolOld", "GatewayDrainStalled",
                 "GatewayLeakSpike", "GatewayCredentialDrops", "GatewayReloadRefused", "GatewayWorkerRestarting",
                 "GatewayGt06BadFrames"):
        assert name in alert_exprs() and f"alertname: {name}" in tests, name


def test_example_scrape_config_is_valid() -> None:
    check = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=PROM_DIR,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr


def test_every_alert_has_a_runbook_and_severity() -> None:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


class Prometheus:
    """Debian's prometheus on a free loopback port, with its own data folder."""

    def __init__(self, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(config)
        self.port = free_port()
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def alert_state(self, name: str) -> str:
        alerts = self.api("alerts")["data"]["alerts"]
        states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
        return states[0] if states else "inactive"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def observed(tmp_path: Path, broker_pair: tuple[Mosquitto, Mosquitto]) -> Iterator[tuple]:
    local, cloud = broker_pair
    gw = Gateway(tmp_path / "gw", local.url, cloud.url, extra='[ingest.gt06]\nlisten = "127.0.0.1:0"\n')
    sink, pub = Sink(cloud.url), Publisher(local.url)
    prom = None
    try:
        gw.start()
        pub.publish_all(traffic(50, devices=5), timeout=60)
        sink.wait_for(50, timeout=60)
        # The shipped rules; only the cloud alert's `for` is shortened so the test takes seconds.
        rules = (PROM_DIR / "alerts.yml").read_text()
        cloud_rule = rules.index("alert: GatewayCloudDisconnected")
        cut = rules.index("for: 5m", cloud_rule)
        (tmp_path / "alerts.yml").write_text(rules[:cut] + "for: 2s" + rules[cut + len("for: 5m"):])
        prom = Prometheus(tmp_path / "prom", yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.yml")],
            "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{gw.port}"]}]}],
        }))
        wait_until(prom.ready, 60, "prometheus ready", 0.2)
        yield gw, cloud, prom
    finally:
        if prom is not None:
            prom.close()
        pub.close()
        sink.close()
        gw.close()


@pytest.mark.slow
def test_prometheus_scrapes_the_gateway_and_fires_cloud_disconnected(observed) -> None:
    gw, cloud, prom = observed
    wait_until(lambda: prom.api("query", query='gateway_connected{side="cloud"}')["data"]["result"], 60,
               "a first scrape", 0.2)
    up = prom.api("query", query='up{job="gateway"}')["data"]["result"]
    assert up and up[0]["value"][1] == "1"

    # The live page passes Prometheus's own lint (names, suffixes, units, help texts)...
    page = gw.metrics()
    lint = subprocess.run([tool("promtool"), "check", "metrics"], input=page, capture_output=True, text=True,
                          timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint
    # ... every metric the dashboard and the alerts read exists on it...
    live = exported_names(page)
    for expr in dashboard_exprs():
        for name in METRIC.findall(expr):
            assert name in live, f"dashboard: {name} is not on /metrics"
    for alert, expr in alert_exprs().items():
        for name in METRIC.findall(expr):
            assert name in live or name in NOT_ON_A_SINGLE_WORKER, f"{alert}: {name} is not on /metrics"
    # ... and every dashboard query is valid PromQL that Prometheus evaluates.
    wait_until(lambda: prom.api("query", query="sum(rate(gateway_messages_in_total[1m]))")["data"]["result"], 30,
               "two scrapes for rate()", 0.2)
    for expr in dashboard_exprs():
        answer = prom.api("query", query=concrete(expr))
        assert answer["status"] == "success", (expr, answer)
    inflow = prom.api("query", query='sum(increase(gateway_messages_in_total{policy="service-test"}[1m]))')
    assert inflow["status"] == "success"

    assert prom.alert_state("GatewayCloudDisconnected") == "inactive"
    cloud.stop()
    wait_until(lambda: gw.metric("gateway_connected", side="cloud") == 0, 30, "the gateway sees the cloud gone")
    states: list[str] = []
    wait_until(lambda: states.append(prom.alert_state("GatewayCloudDisconnected")) or states[-1] == "firing", 60,
               "GatewayCloudDisconnected firing", 0.25)
    assert "pending" in states or states == ["firing"]  # went through `for` (2 s here), or was caught after it
    firing = [a for a in prom.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert [a["labels"]["alertname"] for a in firing] == ["GatewayCloudDisconnected"]
    assert firing[0]["labels"]["instance"] == f"127.0.0.1:{gw.port}" and firing[0]["labels"]["severity"] == "warning"
    cloud.start()
    wait_until(lambda: prom.alert_state("GatewayCloudDisconnected") == "inactive", 60, "resolved", 0.25)
    time.sleep(0)  # nothing else to wait for


def test_dashboard_answers_the_on_call_questions() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(dashboard_exprs())
    for needed in ("gateway_messages_in_total", "gateway_messages_out_total", "gateway_messages_dropped_total",
                   "gateway_delivery_seconds_bucket", "gateway_spool_depth", "gateway_spool_oldest_age_seconds",
                   "gateway_connected", "gateway_policy_reloads_total", "gateway_gt06_connections",
                   "gateway_gt06_events_total", "gateway_last_forward_timestamp_seconds"):
        assert needed in exprs, needed
    cells = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
