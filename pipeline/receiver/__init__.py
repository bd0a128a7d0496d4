"""`hep-ingest receive`: HEP over UDP/TCP -> Avro records -> Kafka.

    settings.py   ReceiverSettings (one frozen object, built by the CLI)
    metrics.py    ReceiverMetrics on a registry handed in
    intake.py     bytes -> (key, Avro value) or a counted refusal (the hot path, no I/O)
    udp.py        DatagramProtocol over the intake; full queue = counted drop
    listen.py     who may share a listen port; bind errors that name the address
    socket_drops.py  the kernel's drop counter of each UDP socket (/proc/net/udp)
    tcp.py        Protocol + HepStreamFramer; full queue = paused reading; connection
                  limit, idle and partial-frame timeouts
    tls.py        the TLS server context; failed handshakes counted
    memory.py     freed heap pages back to the system after connections close
    publisher.py  KafkaPublisher: bounded backlog, per-partition batches, retries
    service.py    run_receiver(): wires the above, runs until `stop`
"""

from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.service import run_receiver
from pipeline.receiver.settings import ReceiverSettings

__all__ = ["ReceiverMetrics", "ReceiverSettings", "run_receiver"]
