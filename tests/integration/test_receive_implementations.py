"""`hep-ingest receive` on each per-packet implementation: the records are the same, and
the startup log and /metrics say which one runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_vectors
from receiver_process import run_receiver_process, send_tcp, send_udp
from test_receive_e2e import _match, consume_sync

from pipeline.embedded import EmbeddedKafka
from tests.implementations import COMPILED, NOT_BUILT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("env", "implementation"),
    [
        pytest.param({"HEP_INGEST_PURE_PYTHON": "1"}, "pure", id="pure-forced"),
        pytest.param(
            {"HEP_INGEST_PURE_PYTHON": ""},  # the default, also in a run on the pure path
            "compiled",
            id="compiled-default",
            marks=pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT),
        ),
    ],
)
def test_receive_publishes_the_vectors_and_says_which_implementation_runs(
    kafka: EmbeddedKafka,
    topic_name: str,
    tmp_path: Path,
    env: dict[str, str],
    implementation: str,
) -> None:
    udp_packets, udp_expected = load_vectors("kamailio_hep3_udp")
    hep2_packets, hep2_expected = load_vectors("kamailio_hep2_udp")
    tcp_packets, tcp_expected = load_vectors("kamailio_hep3_tcp")
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, env_extra=env
    ) as receiver:
        started = receiver.wait_for_event("receiver_started")
        assert started["implementation"] == implementation
        info = {"implementation": implementation}
        assert receiver.metric("hep_ingest_build_info", info) == 1
        other = "compiled" if implementation == "pure" else "pure"
        assert receiver.metric("hep_ingest_build_info", {"implementation": other}) == 0
        receiver.wait_for_event("broker_connected")
        send_udp(receiver.udp_port, udp_packets + hep2_packets + [b"not hep", b"HEP3\x00\x03"])
        send_tcp(receiver.tcp_port, tcp_packets)
        total = len(udp_packets) + len(hep2_packets) + len(tcp_packets)
        records = consume_sync(kafka.bootstrap_servers, topic_name, total)
        assert len(records) == total
        _match(
            records, udp_expected["packets"] + hep2_expected["packets"] + tcp_expected["packets"]
        )
        assert receiver.metric("hep_ingest_packets_invalid_total", {"reason": "bad_magic"}) == 1
        assert receiver.metric("hep_ingest_packets_invalid_total", {"reason": "bad_length"}) == 1
        assert receiver.metric("hep_ingest_packets_published_total") == total
        assert receiver.terminate() == 0
