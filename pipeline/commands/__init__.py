"""CLI commands. Each module defines `register(app)`; the list below is the CLI."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "pipeline.commands.analysis",
    "pipeline.commands.consume",
    "pipeline.commands.database",
    "pipeline.commands.export",
    "pipeline.commands.homer_indexes",
    "pipeline.commands.receive",
    "pipeline.commands.up",
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
