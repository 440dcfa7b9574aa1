"""Logging set-up: human lines or JSON, on stderr.

Access lines belong to the ``certproxy.access`` logger. While that logger is
set up as ``setup_logging`` leaves it (its records reach only certproxy's own
stderr handler), an access line is formatted directly (``proxy/accessline.py``,
compiled with the data plane), byte for byte what the formatter would write,
without the cost of a ``LogRecord`` per request, and
kept in a small buffer that goes out in one write: when it holds
``ACCESS_BATCH`` lines, when ``flush_access()`` runs (the running program
calls it a few times a second and when it stops), and before any other log
line, so lines never change order. Any other set-up (extra handlers, filters,
another level) gets ordinary records with the fields in ``extra``.
Nothing logged here ever contains a header value other than the request
target.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import sys
import time
from typing import TextIO

from ..proxy.accessline import AccessLines, message, tenths_of_ms
from ..proxy.routes import AccessRecord

ACCESS = logging.getLogger("certproxy.access")

_ACCESS_FIELDS = (
    "client",
    "method",
    "target",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream",
    "port",
    "host",
)
_REGISTRY_FIELDS = ("user", "action", "repository", "reference", "upload")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_BATCH = 64


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in (*_ACCESS_FIELDS, *_REGISTRY_FIELDS):
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, separators=(",", ":"))


class _Handler(logging.StreamHandler[TextIO]):
    """stderr, with the buffered access lines written before any other record."""

    def emit(self, record: logging.LogRecord) -> None:
        if _fast is not None and _fast.buffer.lines:
            flush_access()
        super().emit(record)


class _FastAccess:
    """The direct path for access lines (see the module's docstring), made by
    ``setup_logging`` for its handler."""

    def __init__(self, handler: _Handler, json: bool) -> None:
        self.handler = handler
        self.buffer = AccessLines(json)  # the lines themselves (compiled: proxy/accessline.py)
        self.root = logging.getLogger()

    def usable(self) -> bool:
        handler = self.handler
        handlers = self.root.handlers
        return (
            not ACCESS.handlers
            and not ACCESS.filters
            and ACCESS.propagate
            and len(handlers) == 1
            and handlers[0] is handler
            and not handler.filters
            and ACCESS.isEnabledFor(logging.INFO)
        )


# The direct path of the handler setup_logging installed last (None before it runs).
_fast: _FastAccess | None = None


def flush_access() -> None:
    """Write the buffered access lines now."""
    fast = _fast
    if fast is None or not fast.buffer.lines:
        return
    handler = fast.handler
    lines, fast.buffer.lines = fast.buffer.lines, []
    lines.append("")
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write("\n".join(lines))
            handler.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone: as logging would, never fail a request over a log line


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Log to stderr as ``fmt`` (``text`` or ``json``) from ``level`` on; access lines
    take the direct path, and what is buffered is written at exit."""
    global _fast
    flush_access()
    if _fast is None:
        atexit.register(flush_access)
    handler = _Handler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _fast = _FastAccess(handler, fmt == "json")


def access(record: AccessRecord) -> None:
    """Write one access line (a ``proxy.routes.AccessLog``)."""
    fast = _fast
    if fast is not None and fast.usable():
        now = time.time()
        if fast.buffer.json:
            buffer = fast.buffer
            fields = _fields(record, tenths_of_ms(record.seconds) / 10)
            buffer.lines.append(
                json.dumps(
                    {
                        "ts": f"{buffer.stamp(now)}.{int((now - int(now)) * 1000):03d}Z",
                        "level": "info",
                        "logger": "certproxy.access",
                        "msg": message(record),
                        **fields,
                    },
                    separators=(",", ":"),
                )
            )
            waiting = len(buffer.lines)
        else:
            waiting = fast.buffer.add_text(message(record), now)
        if waiting >= ACCESS_BATCH:
            flush_access()
        return
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("%s", message(record), extra=_fields(record, tenths_of_ms(record.seconds) / 10))


def _fields(record: AccessRecord, ms: float) -> dict[str, object]:
    """An access line's fields, by the names of ``_ACCESS_FIELDS``; on a registry route
    the user, action, repository, reference and upload session too (null when none)."""
    values = (*record[:6], ms, *record[7:10])
    fields = dict(zip(_ACCESS_FIELDS, values, strict=True))
    if record.action is not None:
        fields.update(
            user=record.user or "anonymous",
            action=record.action,
            repository=record.repository,
            reference=record.reference,
            upload=record.upload,
        )
    return fields
