"""Installing on a machine without a C compiler: the build warns, the package installs
without the compiled module and runs on the pure-Python implementation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent


def _source_tree(target: Path) -> Path:
    """The files a clone has (tracked or new, not ignored): no build output."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith(("tests/", "bench/", "docs/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_a_failing_compiler_installs_the_pure_package(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to copy the source tree from")
    source = _source_tree(tmp_path / "src")
    wheels = tmp_path / "wheels"
    env = {**os.environ, "CC": "false"}  # every compilation fails, as with no compiler
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(wheels), str(source)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert "compiled extension was not built" in build.stdout + build.stderr
    (wheel,) = wheels.glob("hep_ingest-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/accel.py" in names
    assert not [n for n in names if n.startswith("pipeline/_speedups") and n.endswith(".so")]

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    vector = next((ROOT / "tests/data/hep-vectors/kamailio_hep3_udp/packets").glob("*.bin"))
    # The test venv's editable install of this checkout (which has the module built) must
    # not answer for the unpacked wheel: its import hook goes.
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path\n"
        "                 if '__editable__' not in getattr(f, '__module__', '')]\n"
        "import pipeline, pipeline.accel as a\n"
        "from pipeline.records import ReceiveContext, load_codec\n"
        f"assert pipeline.__file__.startswith({str(site)!r}), pipeline.__file__\n"
        f"data = open({str(vector)!r}, 'rb').read()\n"
        "key, value = a.datagram_encoder(load_codec()).encode_datagram(\n"
        "    data, bytes(16), 1, ReceiveContext('udp', '127.0.0.1', 9, 'r'))\n"
        "compiled = 'pipeline._speedups' in sys.modules\n"
        "print(a.IMPLEMENTATION, compiled, bool(key), len(value) > 100)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    env["PYTHONPATH"] = str(site)
    env["HEP_INGEST_SCHEMAS_DIR"] = str(ROOT / "schemas")
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["pure", "False", "True", "True"]
