"""Call analysis on the stored messages: SQL for `calls`/`call`/`stats`, the ladder
diagram and the output formats. The SQL objects live in migrations/0002_analysis.sql."""

from pipeline.analysis.formats import OutputFormat, render_rows, to_jsonable
from pipeline.analysis.ladder import LadderMessage, message_label, render_ladder

__all__ = [
    "LadderMessage",
    "OutputFormat",
    "message_label",
    "render_ladder",
    "render_rows",
    "to_jsonable",
]
