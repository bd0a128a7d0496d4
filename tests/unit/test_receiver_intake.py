"""The receiver's pure parts: intake (decode, auth, map, encode), settings and CLI options."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from conftest import load_vectors
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.receiver import tls
from pipeline.receiver.intake import Intake
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.settings import ReceiverSettings, parse_listen
from pipeline.receiver.tls import HandshakeFailures, TlsConfigError, load_server_context
from pipeline.records import RecordIdGenerator, load_codec

NOW_US = 1_800_000_000_000_000


def _intake(auth_key: bytes | None = None) -> tuple[Intake, ReceiverMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ReceiverMetrics(registry)
    intake = Intake(
        codec=load_codec(),
        metrics=metrics,
        receiver_id="test:1",
        auth_key=auth_key,
        ids=RecordIdGenerator(b"\x00" * 8),
    )
    return intake, metrics, registry


def test_every_udp_vector_becomes_a_record_keyed_by_call_id() -> None:
    intake, _, registry = _intake()
    codec = load_codec()
    packets, expected = load_vectors("kamailio_hep3_udp")
    context = intake.context("udp", "127.0.0.1", 5060)
    for data, want in zip(packets, expected["packets"], strict=True):
        result = intake.accept(data, context, NOW_US)
        assert result is not None
        key, value = result
        assert key == want["sip"]["call_id"].encode()
        record = codec.decode(value)
        assert record["src_port"] == want["src_port"]
        assert record["capture_id"] == want["capture_id"]
        assert record["transport"] == "udp" and record["receiver_id"] == "test:1"
    sample = registry.get_sample_value
    assert sample("hep_ingest_packets_received_total", {"transport": "udp", "version": "3"}) == 170
    assert sample("hep_ingest_packets_decoded_total") == 170


def test_hepjs_log_packet_is_keyed_by_correlation_id() -> None:
    intake, _, _ = _intake()
    packets, expected = load_vectors("hepjs_hep3_udp")
    context = intake.context("udp", "127.0.0.1", 1)
    keys = [intake.accept(p, context, NOW_US) for p in packets]
    log_index = next(i for i, p in enumerate(expected["packets"]) if p["proto_type"] == 100)
    result = keys[log_index]
    assert result is not None
    assert result[0] == expected["packets"][log_index]["correlation_id"].encode()


@pytest.mark.parametrize(
    "data", [b"", b"HEP3\x00", b"\x07garbage", b"HEP3\x00\x07\x00\x00\x00"]
)
def test_invalid_packets_are_counted_by_reason(data: bytes) -> None:
    intake, metrics, registry = _intake()
    assert intake.accept(data, intake.context("udp", "127.0.0.1", 1), NOW_US) is None
    assert sum(metrics.invalid.values()) == 1
    assert registry.get_sample_value("hep_ingest_packets_decoded_total") == 0


def test_auth_key_rejects_missing_and_wrong_keys() -> None:
    intake, _, registry = _intake(auth_key=b"acceptanceKey")
    context = intake.context("tcp", "127.0.0.1", 1)
    tcp_packets, _ = load_vectors("kamailio_hep3_tcp")
    hepjs_packets, _ = load_vectors("hepjs_hep3_udp")
    keyless, _ = load_vectors("kamailio_hep3_udp")
    assert all(intake.accept(p, context, NOW_US) is not None for p in tcp_packets)
    assert all(intake.accept(p, context, NOW_US) is None for p in hepjs_packets)
    assert all(intake.accept(p, context, NOW_US) is None for p in keyless[:3])
    rejected = "hep_ingest_packets_rejected_total"
    assert registry.get_sample_value(rejected, {"reason": "auth_mismatch"}) == len(hepjs_packets)
    assert registry.get_sample_value(rejected, {"reason": "auth_missing"}) == 3


def test_zero_timestamp_uses_the_receive_time() -> None:
    intake, _, _ = _intake()
    packets, _ = load_vectors("kamailio_hep3_udp")
    data = bytearray(packets[0])
    # ts_sec chunk (0x0009) body -> 0: find the chunk header and zero its 4-byte body.
    at = bytes(data).index(b"\x00\x00\x00\x09\x00\x0a") + 6
    data[at : at + 4] = b"\x00\x00\x00\x00"
    result = intake.accept(bytes(data), intake.context("udp", "127.0.0.1", 1), NOW_US)
    assert result is not None
    record = load_codec().decode(result[1])
    assert record["capture_time_from_receiver"] is True


def test_metrics_start_at_zero_for_drops_and_rejections() -> None:
    registry = CollectorRegistry()
    ReceiverMetrics(registry)
    sample = registry.get_sample_value
    assert sample("hep_ingest_packets_dropped_total", {"reason": "queue_full"}) == 0
    assert sample("hep_ingest_packets_rejected_total", {"reason": "auth_missing"}) == 0
    assert sample("hep_ingest_packets_published_total") == 0
    assert sample("hep_ingest_queue_depth") == 0
    assert sample("hep_ingest_publish_retries_total") == 0
    assert sample("hep_ingest_publish_latency_seconds_count") == 0


def test_settings_validate() -> None:
    assert parse_listen(["127.0.0.1:9060", ":9061", "[::1]:9062"]) == (
        ("127.0.0.1", 9060), ("0.0.0.0", 9061), ("::1", 9062),
    )
    with pytest.raises(ValueError):
        parse_listen(["nonsense"])
    with pytest.raises(ValueError):
        ReceiverSettings(compression="brotli")
    with pytest.raises(ValueError):
        ReceiverSettings(udp=(), tcp=())
    with pytest.raises(ValueError):
        ReceiverSettings(queue_size=0)
    with pytest.raises(ValueError, match="TLS context"):
        ReceiverSettings(tls=(("127.0.0.1", 9061),))
    settings = ReceiverSettings(compression="none")
    assert settings.compression_type is None
    assert ReceiverSettings().compression_type == "zstd"


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_help_lists_every_option_with_its_environment_variable() -> None:
    result = CliRunner().invoke(app, ["receive", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    text = _plain(result.output)
    for option in (
        "udp", "tcp", "bootstrap-servers", "topic", "auth-key", "metrics", "receiver-id",
        "forward-auth-key", "compression", "batch-bytes", "linger-ms", "queue-size",
        "max-backlog-bytes", "enable-idempotence", "create-topic", "partitions",
        "log-level", "log-format", "shutdown-timeout", "tls", "tls-cert", "tls-key",
        "tls-client-ca",
    ):
        assert f"--{option}" in text
        assert "HEP_INGEST_" + option.upper().replace("-", "_") in text


def test_bad_settings_exit_with_usage_error() -> None:
    result = CliRunner().invoke(app, ["receive", "--compression", "brotli"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["receive"], env={"HEP_INGEST_UDP": "nonsense"})
    assert result.exit_code == 2


def test_tls_options_without_what_they_need_exit_with_usage_error(tmp_path: Path) -> None:
    clean = {"HEP_INGEST_TLS_CERT": None, "HEP_INGEST_TLS_KEY": None, "HEP_INGEST_TLS": None}
    cases = [
        (["--tls", "127.0.0.1:9061"], "needs --tls-cert and --tls-key"),
        (["--tls", "127.0.0.1:9061", "--tls-cert", str(tmp_path / "x.pem")], "needs --tls-cert"),
        (["--tls-key", str(tmp_path / "x.key")], "--tls-key without --tls"),
        (
            ["--tls", "127.0.0.1:9061", "--tls-cert", str(tmp_path / "missing.pem"),
             "--tls-key", str(tmp_path / "missing.key")],
            "No such file",
        ),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["receive", *args], env={"COLUMNS": "250", **clean})
        assert result.exit_code == 2, result.output
        assert message in _plain(result.output)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"garbage\.pem"):
        load_server_context(str(tmp_path / "garbage.pem"), str(tmp_path / "garbage.pem"))


def test_failed_tls_handshakes_are_all_counted_and_sampled_in_the_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged: list[dict[str, object]] = []
    monkeypatch.setattr(
        tls.log, "warning", lambda event, **fields: logged.append({"event": event, **fields})
    )
    registry = CollectorRegistry()
    metrics = ReceiverMetrics(registry)
    now = [100.0]
    failures = HandshakeFailures(metrics, interval_s=60.0, clock=lambda: now[0])
    closed = "hep_ingest_tcp_connections_closed_total"
    assert registry.get_sample_value(closed, {"reason": "tls_handshake"}) == 0
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    for step in (0.0, 1.0, 1.0, 59.0):  # logged at 100 and 161
        now[0] += step
        failures(error)
    assert registry.get_sample_value(closed, {"reason": "tls_handshake"}) == 4
    assert [entry["failures_since_last_sample"] for entry in logged] == [1, 3]
    assert logged[0]["event"] == "tls_handshake_failed"
