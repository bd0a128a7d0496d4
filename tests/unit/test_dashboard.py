"""The Grafana dashboard (deploy/grafana) and its Prometheus, checked without a server.

Every metric a panel queries must exist under that name (and with the labels the query
uses) in what the receiver, the consumer and the sink export; the dashboard's
datasource must be the one provisioned; Compose must mount the provisioning where
Grafana reads it, and Prometheus must scrape the services that serve /metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.consumer.filters import ScreenResult
from pipeline.consumer.metrics import ConsumerMetrics
from pipeline.postgres.sink import SinkMetrics
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.sip.kpi import Observations

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hep-ingest.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "hep-ingest.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"

_NAME = re.compile(r"\bhep_ingest_[a-z0-9_]+\b")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every sample name the pipeline exports -> its label names, with each labelled
    metric given a value the way the services give them."""
    registry = CollectorRegistry()
    consumer = ConsumerMetrics(registry)
    sink = SinkMetrics.create(registry)
    receiver = ReceiverMetrics(registry)  # `up` shares one registry the same way
    receiver.invalid["truncated"] += 1
    consumer.dead_letters.labels(reason="decode_error").inc()
    consumer.lag.labels(partition="0").set(1)
    consumer.record_screen(ScreenResult(kept=[], discarded={"method": 1},
                                        censored={"MESSAGE": 1}))
    consumer.record_kpi(Observations(
        messages={("n", "INVITE", "request", ""): 1},
        registrations={("n", "success"): 1},
        call_setups={("n", "answered"): 1},
        session_delays=[("n", 0.2)],
        registration_delays=[("n", 0.02)],
        expired={"timeout": 1},
    ), pending=0)
    sink.rows_written.labels(table="hep_proto_1_call").inc()
    sink.latency.observe(0.01)
    sink.retries.labels(reason="x").inc()
    sink.rows_rejected.labels(reason="x").inc()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "hep-ingest" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_panels_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(provisioned) == 1
    source = provisioned[0]
    assert source["type"] == "prometheus"
    wanted = {"type": "prometheus", "uid": source["uid"]}
    for title, target in _targets(dashboard):
        assert target["datasource"] == wanted, title
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == wanted, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == wanted


def test_every_queried_metric_exists_with_its_labels(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    queries = [(title, t["expr"]) for title, t in _targets(dashboard)]
    queries += [(f"variable {v['name']}", v["query"]["query"])
                for v in dashboard["templating"]["list"]]
    queried: set[str] = set()
    for title, expr in queries:
        names = set(_NAME.findall(expr))
        assert names, f"{title}: queries no hep_ingest metric: {expr}"
        missing = names - set(exported)
        assert not missing, f"{title}: no such metric {sorted(missing)}"
        queried |= names
        labels = set().union(*(exported[name] for name in names))
        used = set(_MATCHER.findall(expr))
        for group in _BY.findall(expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        assert used <= labels, f"{title}: labels {sorted(used - labels)} not on {names}"
    # The dashboard covers the SIP KPIs and the pipeline's own health.
    for needed in (
        "hep_ingest_sip_messages_total",
        "hep_ingest_sip_call_setups_total",
        "hep_ingest_sip_registrations_total",
        "hep_ingest_sip_session_request_delay_seconds_bucket",
        "hep_ingest_sip_registration_request_delay_seconds_bucket",
        "hep_ingest_packets_received_total",
        "hep_ingest_packets_dropped_total",
        "hep_ingest_records_discarded_total",
        "hep_ingest_consumer_lag_total",
        "hep_ingest_rows_written_total",
        "hep_ingest_write_latency_seconds_bucket",
    ):
        assert needed in queried, needed


def _balanced(expr: str) -> bool:
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = False
    for char in expr:
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and not in_string


def test_queries_are_well_formed(dashboard: dict[str, Any]) -> None:
    for title, target in _targets(dashboard):
        expr = target["expr"]
        assert _balanced(expr), f"{title}: {expr}"
        # Ranges follow Grafana's interval variables, never a fixed window.
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"{title}: [{window}]"
        # A rate or increase is taken of counters or histogram buckets only.
        for name in re.findall(r"(?:rate|increase)\((hep_ingest_[a-z0-9_]+)", expr):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{title}: {name}"
    assert not _balanced("sum(rate(x[5m])")


def test_the_checks_have_teeth(exported: dict[str, set[str]]) -> None:
    assert "hep_ingest_sip_messages" not in exported  # only with its _total suffix
    assert not set(_NAME.findall("rate(hep_ingest_sip_message_total[1m])")) <= set(exported)


def test_compose_provisions_grafana_and_prometheus(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana, prometheus = services["grafana"], services["prometheus"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"]
              if v.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"

    source = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in grafana["depends_on"]
    prom_mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in prometheus["volumes"]
                   if v.startswith("./")}
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    # Prometheus scrapes every service that serves /metrics, on its port.
    serving = {
        name: int(str(svc["environment"]["HEP_INGEST_METRICS"]).rsplit(":", 1)[1])
        for name, svc in services.items()
        if isinstance(svc.get("environment"), dict) and "HEP_INGEST_METRICS" in svc["environment"]
    }
    assert set(serving) == {"receive", "consume"}
    scraped = {
        name: sd["port"]
        for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    }
    assert scraped == serving
    # The KPIs the dashboard shows are on in the stack.
    assert services["consume"]["environment"]["HEP_INGEST_SIP_KPI"] == "true"
