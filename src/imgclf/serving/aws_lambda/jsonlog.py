"""Structured logs for the Lambda handler: one JSON object per line on stdout.

CloudWatch Logs Insights parses JSON lines, so every record can be queried by field
(``fields event, duration_ms | filter event = "model_loaded"``). Records carry the request id of
the invocation being served.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any

LOGGER_NAME = "imgclf.lambda"
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Request id of the invocation being served, added to every record.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON object: time, level, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return one JSON line for ``record``."""
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            payload["request_id"] = current
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at the time of the call, not at creation."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def get_logger() -> logging.Logger:
    """The handler's logger, writing JSON lines to stdout (configured once, idempotent).

    The level comes from ``LOG_LEVEL`` (default ``INFO``).
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        stream = _StdoutHandler()
        stream.setFormatter(JsonFormatter())
        logger.addHandler(stream)
        level = os.environ.get("LOG_LEVEL", "INFO").upper()
        logger.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
        # The Lambda runtime installs its own root handler; without this each line appears twice.
        logger.propagate = False
    return logger


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log a named event with structured fields, e.g. ``log_event("model_loaded", ms=12)``."""
    safe = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
    get_logger().log(level, event, extra={"event": event, **safe})
