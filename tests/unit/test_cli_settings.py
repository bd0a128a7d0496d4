"""Every numeric option of every command refuses nan, inf and -1: one line, exit 2.

The options are found by walking the CLI itself, so an option added later is checked
too; the same values given through each option's HEP_INGEST_* variable are refused
the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer.main
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from pipeline.cli import app

BAD_VALUES = ("nan", "inf", "-inf", "-1", "1e400")


def numeric_options() -> Iterator[tuple[str, TyperOption, list[str]]]:
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        # Required arguments get a value, so the option is what fails.
        arguments = [
            "x" for p in command.params if isinstance(p, TyperArgument) and p.required
        ]
        for param in command.params:
            if isinstance(param, TyperOption) and param.type_descriptor.annotation in (int, float):
                yield name, param, arguments


CASES = [
    pytest.param(name, param, arguments, id=f"{name}-{param.opts[0]}")
    for name, param, arguments in numeric_options()
]


def test_the_walk_finds_the_options_named_in_the_issue() -> None:
    found = {(name, param.opts[0]) for name, param, _ in numeric_options()}
    for expected in [("receive", "--retry-initial-s"), ("receive", "--progress-interval"),
                     ("receive", "--udp-rcvbuf"), ("consume", "--flush-interval"),
                     ("up", "--drain-timeout"), ("partitions", "--retention-days")]:
        assert expected in found
    assert len(found) >= 25


def _assert_refused(result: object, option: str) -> None:
    code = result.exit_code  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) == 1, output
    assert option in lines[0] and "Invalid value" in lines[0], lines[0]


@pytest.mark.parametrize(("command", "param", "arguments"), CASES)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_flag_refused(command: str, param: TyperOption, arguments: list[str], value: str) -> None:
    option = param.opts[0]
    result = CliRunner().invoke(app, [command, *arguments, f"{option}={value}"], env={})
    _assert_refused(result, option)


@pytest.mark.parametrize(("command", "param", "arguments"), CASES)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_variable_refused(
    command: str, param: TyperOption, arguments: list[str], value: str
) -> None:
    if param.envvar is None:
        pytest.skip("no variable (the supervisor's hidden --worker-index)")
    result = CliRunner().invoke(app, [command, *arguments], env={str(param.envvar): value})
    _assert_refused(result, param.opts[0])


def test_every_numeric_option_shows_its_range_in_help() -> None:
    for _name, param, _ in numeric_options():
        assert param.min is not None, f"{param.opts[0]} declares no minimum"


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--interval", "0m"],
        ["partitions", "create", "--ahead", "soon"],
        ["receive", "--metrics", "localhost:notaport"],
        ["receive", "--retry-initial-s", "2", "--retry-max-s", "1"],
    ],
    ids=lambda a: " ".join(a),
)
def test_other_bad_settings_are_one_line_and_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, args, env={})
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Invalid value" in lines[0], result.output
