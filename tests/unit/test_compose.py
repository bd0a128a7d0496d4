"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The Compose file must validate against the Compose specification schema (a copy in
tests/data/compose-spec.json), and every hep-ingest command, option and HEP_INGEST_*
variable it uses must exist in the CLI: a renamed option would otherwise be ignored
silently by a container that then runs on defaults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import typer.testing
import yaml

from pipeline import resources
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
ENV_PREFIX = "HEP_INGEST_"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def cli_commands() -> dict[str, Any]:
    # typer vendors click (typer._click): the command objects are read by duck typing.
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def _envvars(command: Any) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def _options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _hep_ingest_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_schema_rejects_a_broken_file() -> None:
    # The schema check has teeth: a misspelt key fails it.
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = {"services": {"receive": {"image": "x", "port": ["9060:9060"]}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_compose_has_the_pipeline_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"kafka", "postgres", "migrate", "receive", "consume"}

    kafka, postgres = services["kafka"], services["postgres"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"]), "pinned official Kafka"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert str(kafka["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]).startswith("1@")
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-\w+)?", postgres["image"]), "pinned PostgreSQL"

    receive = services["receive"]
    assert {"9060:9060/udp", "9060:9060/tcp"} <= set(receive["ports"])
    assert services["consume"]["deploy"]["replicas"] == 2
    assert services["migrate"]["restart"] == "no"

    for name in ("kafka", "postgres", "receive", "consume"):
        assert "healthcheck" in services[name], f"{name} has no health check"

    conditions = {
        name: {dep: spec["condition"] for dep, spec in svc.get("depends_on", {}).items()}
        for name, svc in services.items()
    }
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    assert conditions["receive"] == {"kafka": "service_healthy"}
    assert conditions["consume"] == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }

    declared = set(compose["volumes"])
    used = {
        volume.split(":", 1)[0]
        for svc in services.values()
        for volume in svc.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert used == declared == {"kafka-data", "postgres-data", "prometheus-data", "grafana-data"}


def test_every_command_option_and_variable_exists_in_the_cli(
    compose: dict[str, Any], cli_commands: dict[str, Any]
) -> None:
    services = _hep_ingest_services(compose)
    assert set(services) == {"migrate", "receive", "consume"}
    for name, service in services.items():
        command_line = service["command"]
        assert isinstance(command_line, list), f"{name}: use the exec form"
        command = cli_commands.get(command_line[0])
        assert command is not None, f"{name}: `hep-ingest {command_line[0]}` does not exist"
        for arg in command_line[1:]:
            if arg.startswith("-"):
                flag = arg.split("=", 1)[0]
                assert flag in _options(command), f"{name}: {flag} is not an option"
        variables = {k for k in _environment(service) if k.startswith(ENV_PREFIX)}
        unknown = variables - _envvars(command)
        assert not unknown, f"{name}: `hep-ingest {command.name}` reads no {sorted(unknown)}"
        assert variables, f"{name}: configured through HEP_INGEST_* variables"


@pytest.mark.parametrize("command", ["migrate", "receive", "consume", "up"])
def test_help_lists_the_variables(command: str) -> None:
    result = typer.testing.CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output


def test_non_hep_ingest_variables_stay_with_their_images(compose: dict[str, Any]) -> None:
    for name in ("kafka", "postgres"):
        assert not any(k.startswith(ENV_PREFIX) for k in _environment(compose["services"][name]))


def _stages(text: str) -> list[dict[str, Any]]:
    """Dockerfile instructions grouped by stage (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[dict[str, Any]] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert match, line
            stages.append({"from": match.group(1), "name": match.group(2), "lines": []})
        elif stages:
            stages[-1]["lines"].append((instruction, rest.strip()))
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert len(stages) >= 2 and all(stage["name"] for stage in stages)
    image_arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert image_arg and "slim" in image_arg.group(1)
    assert re.search(r":\d+\.\d+", image_arg.group(1)), "pinned Python"

    runtime = stages[-1]
    lines = runtime["lines"]
    users = [rest for instruction, rest in lines if instruction == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "COPY" and rest.startswith(f"--from={stages[0]['name']}") for i, rest in lines)
    entrypoint = [json.loads(rest) for instruction, rest in lines if instruction == "ENTRYPOINT"]
    assert entrypoint == [["hep-ingest"]]
    # Nothing the build stage compiled with (pip cache, sources) is in the final image.
    assert not any(i == "RUN" and "pip install" in rest for i, rest in lines)


def test_dockerfile_ships_the_data_files_the_package_looks_up() -> None:
    text = DOCKERFILE.read_text()
    for variable, folder in (
        ("HEP_INGEST_SCHEMAS_DIR", "schemas"),
        ("HEP_INGEST_MIGRATIONS_DIR", "migrations"),
    ):
        assert variable in Path(resources.__file__).read_text()
        target = re.search(rf"{variable}=(\S+)", text)
        assert target, f"{variable} is not set"
        assert re.search(rf"^COPY {folder} {re.escape(target.group(1))}$", text, re.MULTILINE)
        assert any((ROOT / folder).iterdir())
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pipeline", "schemas", "migrations", "pyproject.toml", "README.md"):
        assert needed not in ignored
