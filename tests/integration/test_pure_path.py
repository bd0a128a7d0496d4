"""The README's test command also runs the suite's unit tests and the key end-to-end
tests on the pure-Python per-packet code.

`pipeline.accel` chooses the implementation once per process, so the pure run is a
pytest of its own, in a subprocess with HEP_INGEST_PURE_PYTHON=1 (which the receiver
and consumer processes those tests start inherit). It leaves out what does not depend
on that choice and already ran here, to keep the time small: the `[compiled]`
variants of the tests parametrized over both implementations, and the unit test
modules in SAME_ON_BOTH. A new unit test module is in the pure run by default. The
run must pass, and must really have been pure: its report header says so, and so do
the `receiver_started` and `consumer_started` events of every process it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline.accel import IMPLEMENTATION, PURE_ENV

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
END_TO_END = ("tests/integration/test_receive_e2e.py", "tests/integration/test_consume_e2e.py")
#: Unit test modules whose outcome cannot depend on pipeline.accel's choice.
SAME_ON_BOTH = (
    "test_accel", "test_accel_rows",  # compiled == pure, both imported directly
    "test_hep_properties", "test_sip_parser",  # the pure modules, or both through `impl`
    "test_cli_settings", "test_readme", "test_compose", "test_typing",  # CLI, docs, mypy
    "test_priority", "test_supervisor", "test_stack", "test_metrics_file",  # processes
)  # fmt: skip
#: What the pure run runs: a pytest command line, relative to the repository root.
PURE_RUN = (
    "tests/unit", *END_TO_END, "-k", "not compiled",
    *(f"--ignore=tests/unit/{name}.py" for name in SAME_ON_BOTH),
)  # fmt: skip


def started_events(folder: Path) -> list[dict[str, object]]:
    """The receiver_started and consumer_started events in the logs under `folder`."""
    events = []
    for log in folder.rglob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") in (
                "receiver_started", "consumer_started"
            ):  # fmt: skip
                events.append(event)
    return events


@pytest.mark.timeout(1500)
def test_unit_and_end_to_end_tests_pass_on_the_pure_path(tmp_path: Path) -> None:
    if IMPLEMENTATION == "pure":
        pytest.skip(f"this run is on the pure path already ({PURE_ENV} or no compiled module)")
    inner, report = tmp_path / "run", tmp_path / "pure.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *PURE_RUN, "-p", "no:cacheprovider",
         "--basetemp", str(inner), f"--junitxml={report}"],
        cwd=ROOT, env={**os.environ, PURE_ENV: "1"}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=1400,
    )  # fmt: skip
    output = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    assert f"hep-ingest per-packet code: pure ({PURE_ENV}=1)" in result.stdout, output

    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("failures", "1")) == int(suite.get("errors", "1")) == 0
    assert int(suite.get("tests", "0")) > 500, suite.attrib  # the unit tests ran
    ran = {
        case.get("classname", "").replace(".", "/") + ".py"
        for case in suite.iter("testcase")
        if case.find("skipped") is None
    }
    assert set(END_TO_END) <= ran, sorted(ran)

    events = started_events(inner)
    kinds = {event["event"] for event in events}
    assert kinds == {"receiver_started", "consumer_started"}, events
    assert {event.get("implementation") for event in events} == {"pure"}, events
