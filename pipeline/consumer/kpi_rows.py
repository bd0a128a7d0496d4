"""SIP KPIs of built rows: the bridge between `CaptureRow` values and `SipKpi`.

Pure code. The consumer calls `observe_rows` with the rows of a batch once PostgreSQL
has committed them (what the KPIs count is what is stored).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pipeline.sip.kpi import Observations, SipKpi
from pipeline.storage.rows import FACTS, CaptureRow

# What the KPIs read of a row: its facts (`CaptureRow.facts`), not its values.
_CALL_ID: Final = FACTS.index("call_id")
_METHOD: Final = FACTS.index("method")
_STATUS: Final = FACTS.index("status")
_CSEQ_NUMBER: Final = FACTS.index("cseq_num")
_CSEQ_METHOD: Final = FACTS.index("cseq_method")
_TO_TAG: Final = FACTS.index("to_tag")
_NODE_NAME: Final = FACTS.index("node_name")
_CAPTURE_ID: Final = FACTS.index("capture_id")
_CAPTURE_TIME: Final = FACTS.index("capture_time")
_PARTITION: Final = FACTS.index("kafka_partition")


def node_of(node_name: str | None, capture_id: int | None) -> str:
    """The node a message was captured at: its HEP node name, else its capture id
    (as heplify-server names a node without a name)."""
    if node_name:
        return node_name
    return str(capture_id) if capture_id is not None else "unknown"


def observe_rows(kpi: SipKpi, rows: Iterable[CaptureRow]) -> Observations:
    """Feed the SIP rows of `rows` (those with a parsed Call-ID) to `kpi`."""
    out = Observations()
    observe = kpi.observe
    nodes: dict[tuple[str | None, int | None], str] = {}
    for row in rows:
        facts = row.facts
        call_id = facts[_CALL_ID]
        if call_id is None:
            continue  # not SIP, or SIP that could not be parsed
        source = (facts[_NODE_NAME], facts[_CAPTURE_ID])
        node = nodes.get(source)
        if node is None:
            node = nodes[source] = node_of(*source)
        observe(
            out,
            facts[_PARTITION] or 0,
            node,
            facts[_METHOD],
            facts[_STATUS],
            facts[_CSEQ_NUMBER],
            facts[_CSEQ_METHOD],
            call_id,
            bool(facts[_TO_TAG]),
            # create_date.timestamp(), exactly: both divide the microseconds.
            facts[_CAPTURE_TIME] / 1_000_000,
        )
    return out
