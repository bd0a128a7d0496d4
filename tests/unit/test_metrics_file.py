"""Metrics handed from `up`'s children through files (pipeline.observability.metrics_file)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.observability.metrics_file import MetricsFiles, MetricsFileWriter, write_metrics
from pipeline.receiver.metrics import shutdown_drops
from pipeline.stack import read_totals


def test_a_parent_registry_reads_the_childrens_files_and_keeps_their_last_counts(
    tmp_path: Path,
) -> None:
    receiver, consumer = CollectorRegistry(), CollectorRegistry()
    received = Counter("hep_ingest_packets_received", "", ["transport"], registry=receiver)
    dropped = Counter("hep_ingest_packets_dropped", "", ["reason"], registry=receiver)
    lag = Gauge("hep_ingest_consumer_lag_total", "", registry=consumer)
    files = [tmp_path / "receiver.prom", tmp_path / "consumer.prom"]
    parent = CollectorRegistry()
    parent.register(MetricsFiles(files))
    assert read_totals(parent).received == 0  # nothing written yet

    received.labels("udp").inc(7)
    received.labels("tcp").inc(2)
    dropped.labels("shutdown").inc(1)
    lag.set(4)
    writer = MetricsFileWriter(receiver, files[0], interval=3600)  # written at start
    write_metrics(consumer, files[1])
    totals = read_totals(parent)
    assert (totals.received, totals.dropped, totals.lag) == (9, 1, 4)

    received.labels("udp").inc(1)
    writer.close()  # the final write: what the child exits with
    assert read_totals(parent).received == 10
    assert shutdown_drops(parent) == 1

    files[0].write_text("not { the text format")  # unreadable: the last good read stands
    files[1].unlink()
    totals = read_totals(parent)
    assert (totals.received, totals.lag) == (10, 4)
    assert not list(tmp_path.glob(".*.tmp"))  # replaced whole, no temporary left


def test_the_files_of_one_childs_workers_are_summed_with_a_worker_label(tmp_path: Path) -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pipeline.observability.metrics_file import worker_metrics_file

    base = tmp_path / "consumer.prom"
    files = [worker_metrics_file(base, k) for k in range(2)]
    assert [f.name for f in files] == ["consumer-w0.prom", "consumer-w1.prom"]
    parent = CollectorRegistry()
    parent.register(MetricsFiles(files, label_workers=True))
    for stored, path in zip((3, 4), files, strict=True):
        worker = CollectorRegistry()
        Counter("hep_ingest_rows_written", "", ["table"], registry=worker).labels("t").inc(stored)
        Gauge("hep_ingest_consumer_lag_total", "", registry=worker).set(stored * 10)
        write_metrics(worker, path)
    totals = read_totals(parent)
    assert (totals.stored, totals.lag) == (7, 70)
    # One family per metric, one series per worker: a valid exposition.
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(parent).decode())}
    rows = [s for s in families["hep_ingest_rows_written"].samples if s.name.endswith("_total")]
    assert sorted((s.labels["worker"], s.value) for s in rows) == [("0", 3.0), ("1", 4.0)]


def test_a_family_every_child_exports_is_exposed_once(tmp_path: Path) -> None:
    from prometheus_client.exposition import generate_latest

    from pipeline.observability.metrics import register_build_info
    from pipeline.observability.metrics_file import children_metrics, worker_metrics_file

    receiver = tmp_path / "receiver.prom"
    consumers = [worker_metrics_file(tmp_path / "consumer.prom", k) for k in range(2)]
    for path in (receiver, *consumers):
        child = CollectorRegistry()
        register_build_info(child)  # both `receive` and `consume` export it
        Counter(f"hep_ingest_{path.stem.replace('-', '_')}", "", registry=child).inc()
        write_metrics(child, path)
    parent = CollectorRegistry()
    assert children_metrics(parent) is children_metrics(parent)  # registered once
    children_metrics(parent).add([receiver])
    children_metrics(parent).add(consumers, label_workers=True)
    text = generate_latest(parent).decode()
    assert text.count("# TYPE hep_ingest_build_info ") == 1, text
    for name in ("receiver", "consumer_w0", "consumer_w1"):
        assert text.count(f"# TYPE hep_ingest_{name}_total counter") == 1, text
