"""Builds the optional compiled extension, pipeline._speedups (everything else is in
pyproject.toml).

Without a C compiler or the Python headers, or if Cython or the compilation fails, the
build prints a warning and installs the package without the extension: it then runs on
the pure-Python implementation of the same functions (see pipeline/accel.py).
HEP_INGEST_BUILD_PURE=1 skips the extension on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "pipeline/_speedups.pyx"


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on without the extension when it cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the platform cannot build extensions at all
            _warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, missing headers, ...
            _warn(exc)


def _warn(exc: BaseException) -> None:
    print(
        f"WARNING: hep-ingest's compiled extension was not built ({exc!r}); "
        "installing the pure-Python implementation (same behaviour, more CPU per packet).",
        file=sys.stderr,
    )


def _extensions() -> list[Extension]:
    if os.environ.get("HEP_INGEST_BUILD_PURE") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(exc)
        return []
    try:
        return cythonize(
            [Extension("pipeline._speedups", [SOURCE])],
            compiler_directives={"language_level": "3"},
            quiet=True,
        )
    except Exception as exc:  # a Cython error: same fallback as a compiler error
        _warn(exc)
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
