"""Where the project's data files live.

`schemas/` and `migrations/` sit at the repository root (the layout operators and
reviewers look for). The package finds them next to itself in a source checkout or an
editable install; a container or a wheel can point elsewhere with the environment
variables below.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _locate(env_var: str, name: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    return _PROJECT_ROOT / name


def schemas_dir() -> Path:
    return _locate("HEP_INGEST_SCHEMAS_DIR", "schemas")


def migrations_dir() -> Path:
    return _locate("HEP_INGEST_MIGRATIONS_DIR", "migrations")
