"""What a PostgreSQL failure means to the person who ran the command.

One mapping, used by every command that talks to the database (`migrate`,
`partitions`, `calls`, `call`, `stats`): asyncpg and OS errors become one line naming
what failed, and are told apart by whether a retry could ever help.

    configuration   the DSN itself is wrong: unparsable, unknown database, unknown role
                    or bad password. Retrying cannot help; the command exits 2.
    runtime         the server is unreachable, refused for now, or a statement failed.
                    The same command may work later; it exits 1.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

import asyncpg

EXIT_RUNTIME = 1
EXIT_CONFIGURATION = 2

# 28: invalid authorization (no such role, wrong password, no pg_hba entry);
# 3D: invalid catalog name (no such database).
_CONFIGURATION_SQLSTATE_CLASSES = frozenset({"28", "3D"})
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (``postgresql://user:***@host/db``)."""
    return _PASSWORD.sub(r"\1***@", dsn)


@dataclass(frozen=True, slots=True)
class DatabaseFailure:
    """One line for the user and the exit code that goes with it."""

    message: str
    configuration: bool

    @property
    def exit_code(self) -> int:
        return EXIT_CONFIGURATION if self.configuration else EXIT_RUNTIME


def is_configuration_error(exc: BaseException) -> bool:
    """The DSN is at fault (bad syntax, unknown database or role, wrong password).

    Call it on errors of a connect only: asyncpg reports a DSN it cannot parse as
    ClientConfigurationError, or as a plain ValueError (``[zz``: "Invalid IPv6 URL") or
    OverflowError (a port out of range).
    """
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in _CONFIGURATION_SQLSTATE_CLASSES
    return isinstance(exc, asyncpg.ClientConfigurationError | ValueError | OverflowError)


def describe_database_error(exc: BaseException, dsn: str | None = None) -> DatabaseFailure | None:
    """The user-facing failure for `exc`, or None when it is not a database error (a bug)."""
    where = f" {redact_dsn(dsn)}" if dsn else ""
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError | OverflowError):
        return DatabaseFailure(f"bad PostgreSQL DSN{where}: {exc}", configuration=True)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseFailure(f"PostgreSQL{where}: {exc}", configuration=True)
    if is_configuration_error(exc):  # SQLSTATE class 28: the login was refused
        return DatabaseFailure(f"PostgreSQL{where} refused the login: {exc}", configuration=True)
    if isinstance(exc, socket.gaierror):
        return DatabaseFailure(
            f"cannot resolve the PostgreSQL host{where}: {exc.strerror or exc}",
            configuration=False,
        )
    if isinstance(exc, OSError | TimeoutError):
        detail = str(exc) or type(exc).__name__
        return DatabaseFailure(f"cannot reach PostgreSQL{where}: {detail}", configuration=False)
    if isinstance(exc, asyncpg.PostgresError):
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        return DatabaseFailure(f"PostgreSQL{where}: {exc}{state}", configuration=False)
    if isinstance(exc, asyncpg.InterfaceError):
        return DatabaseFailure(f"PostgreSQL{where}: {exc}", configuration=False)
    return None
