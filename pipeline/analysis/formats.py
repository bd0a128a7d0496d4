"""Rows (mappings from column to value) as an aligned table, JSON or CSV.

Timestamps are ISO 8601 in JSON and CSV and UTC with milliseconds in tables; intervals
are seconds; addresses are text; NULL is empty (table, CSV) or null (JSON).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

Row = Mapping[str, Any]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def to_jsonable(value: Any) -> Any:
    """A value JSON can hold: intervals as float seconds, times as ISO 8601."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 6)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address
                  | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def cell_text(value: Any) -> str:
    """A value as a table or CSV cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        moment: datetime = value
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, timedelta):
        return f"{value.total_seconds():.3f}"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "NaN"
    if isinstance(value, Decimal):
        return str(value)
    return str(to_jsonable(value))


def render_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    if not rows:
        return "(no rows)\n"
    cells = [[cell_text(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines) + "\n"


def render_json(rows: Sequence[Row], columns: Sequence[str]) -> str:
    data = [{c: to_jsonable(row.get(c)) for c in columns} for row in rows]
    return json.dumps(data, indent=2) + "\n"


def render_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else to_jsonable(row.get(c)) for c in columns])
    return buffer.getvalue()


def render_rows(rows: Sequence[Row], columns: Sequence[str], fmt: OutputFormat) -> str:
    if fmt is OutputFormat.json:
        return render_json(rows, columns)
    if fmt is OutputFormat.csv:
        return render_csv(rows, columns)
    return render_table(rows, columns)
