"""Pure storage mapping: decoded HEP records to capture-table rows."""

from pipeline.storage.rows import COLUMNS, CaptureRow, build_row, table_for

__all__ = ["COLUMNS", "CaptureRow", "build_row", "table_for"]
