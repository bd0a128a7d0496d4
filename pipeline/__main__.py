"""``python -m pipeline``: the `hep-ingest` command (how `up` starts its children)."""

from pipeline.cli import app

app(prog_name="hep-ingest")
