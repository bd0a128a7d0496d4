"""SIP KPIs of built rows: the bridge between `CaptureRow` values and `SipKpi`.

Pure code. The consumer calls `observe_rows` with the rows of a batch once PostgreSQL
has committed them (what the KPIs count is what is stored).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pipeline.sip.kpi import Observations, SipKpi
from pipeline.storage.rows import COLUMNS, CaptureRow

_CALL_ID: Final = COLUMNS.index("call_id")
_METHOD: Final = COLUMNS.index("method")
_STATUS: Final = COLUMNS.index("status")
_CSEQ_NUMBER: Final = COLUMNS.index("cseq_num")
_CSEQ_METHOD: Final = COLUMNS.index("cseq_method")
_TO_TAG: Final = COLUMNS.index("to_tag")
_NODE_NAME: Final = COLUMNS.index("node_name")
_CAPTURE_ID: Final = COLUMNS.index("capture_id")
_CREATE_DATE: Final = COLUMNS.index("create_date")
_PARTITION: Final = COLUMNS.index("kafka_partition")


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
        values = row.values
        call_id = values[_CALL_ID]
        if call_id is None:
            continue  # not SIP, or SIP that could not be parsed
        source = (values[_NODE_NAME], values[_CAPTURE_ID])
        node = nodes.get(source)
        if node is None:
            node = nodes[source] = node_of(*source)
        observe(
            out,
            values[_PARTITION] or 0,
            node,
            values[_METHOD],
            values[_STATUS],
            values[_CSEQ_NUMBER],
            values[_CSEQ_METHOD],
            call_id,
            bool(values[_TO_TAG]),
            values[_CREATE_DATE].timestamp(),
        )
    return out
