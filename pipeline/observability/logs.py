"""One event per line.

Call sites log an event name and fields: ``log.info("publish_failed", extra={"fields":
{"error": str(exc), "backlog": n}})``, or use the `event()` shortcut. The JSON
formatter prints ``{"ts": ..., "level": ..., "logger": ..., "event": ..., **fields}``
so that log shippers index fields without parsing prose; `--log-format text` prints
the same on one human-readable line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        rendered = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = (
            f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()} {rendered}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text.rstrip()


class EventLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose calls take fields as keyword arguments: ``log.info("evt", n=3)``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LOGGING_KWARGS}
        if fields:
            kwargs["extra"] = {"fields": fields}
        return msg, kwargs

    if TYPE_CHECKING:
        # What `process` accepts: any keyword is a field (``log.info("evt", **totals)``),
        # not only LoggerAdapter's exc_info/stack_info/stacklevel/extra.
        def debug(self, msg: object, *args: object, **kwargs: Any) -> None: ...
        def info(self, msg: object, *args: object, **kwargs: Any) -> None: ...
        def warning(self, msg: object, *args: object, **kwargs: Any) -> None: ...
        def error(self, msg: object, *args: object, **kwargs: Any) -> None: ...
        def exception(self, msg: object, *args: object, **kwargs: Any) -> None: ...
        def critical(self, msg: object, *args: object, **kwargs: Any) -> None: ...


_LOGGING_KWARGS = {"exc_info", "stack_info", "stacklevel", "extra"}


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name), {})


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at error level; our own events say it once.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.CRITICAL))
