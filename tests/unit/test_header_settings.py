"""--custom-header / --a-leg-header: the commands, `up`'s consumer, the counters."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.consumer.metrics import register_header_metrics
from pipeline.stack import Endpoints, UpSettings, consumer_command
from pipeline.storage.headers import header_extraction


@pytest.mark.parametrize("command", ["consume", "up"])
@pytest.mark.parametrize(("option", "value"), [
    ("--custom-header", "callid"), ("--custom-header", "X-CID,("), ("--a-leg-header", "X CID"),
])
def test_a_bad_rule_is_a_one_line_usage_error(command: str, option: str, value: str) -> None:
    result = CliRunner().invoke(app, [command, option, value, "--dsn", "postgresql:///x"],
                                env={})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Invalid value" in lines[0], result.output


def test_the_variables_are_read_like_the_flags() -> None:
    # The check runs before anything connects: a bad rule in the variable is refused too.
    result = CliRunner().invoke(app, ["consume", "--dsn", "postgresql:///x"],
                                env={"HEP_INGEST_A_LEG_HEADERS": "X-CID X,("})
    assert result.exit_code == 2 and "'X,('" in result.output, result.output


def test_up_passes_the_rules_to_its_consumer(tmp_path: Path) -> None:
    settings = UpSettings(data_dir=tmp_path, custom_headers=("X-CID", "X-T,^t-(\\w+)"),
                          a_leg_headers=("X-CID",))
    endpoints = Endpoints(
        udp=(), tcp=(), bootstrap_servers="127.0.0.1:9092", dsn="postgresql:///hep",
        topic="hep", embedded_kafka=True, embedded_postgres=True, data_dir=tmp_path,
    )
    argv = list(consumer_command(settings, endpoints).argv)
    assert argv[-6:] == ["--custom-header", "X-CID", "--custom-header", "X-T,^t-(\\w+)",
                         "--a-leg-header", "X-CID"]


def test_counters_show_what_each_rule_did() -> None:
    headers = header_extraction(custom=("X-CID,^(\\d+)$",), a_leg=("X-CID",))
    headers.custom_values({"x-cid": "123"})
    headers.custom_values({"x-cid": "abc"})
    headers.a_leg_id({"x-cid": "abc"})
    registry = CollectorRegistry()
    register_header_metrics(registry, headers)
    text = generate_latest(registry).decode()
    assert 'hep_ingest_sip_headers_total{header="X-CID",outcome="extracted",use="custom"} 1.0' \
        in text
    assert 'hep_ingest_sip_headers_total{header="X-CID",outcome="regex_miss",use="custom"} 1.0' \
        in text
    assert 'hep_ingest_sip_headers_total{header="X-CID",outcome="extracted",use="a_leg"} 1.0' \
        in text


def test_no_rules_no_counters() -> None:
    registry = CollectorRegistry()
    register_header_metrics(registry, header_extraction())
    assert "hep_ingest_sip_headers" not in generate_latest(registry).decode()
