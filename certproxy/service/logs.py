"""Logging set-up: human lines or JSON, on stderr.

Access lines belong to the ``certproxy.access`` logger. While that logger is
set up as ``setup_logging`` leaves it (its records reach only certproxy's own
stderr handler), an access line is formatted here, byte for byte what the
formatter would write, without the cost of a ``LogRecord`` per request, and
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
        if _fast is not None and _fast.lines:
            flush_access()
        super().emit(record)


class _FastAccess:
    """The direct path for access lines (see the module's docstring), made by
    ``setup_logging`` for its handler."""

    def __init__(self, handler: _Handler, json: bool) -> None:
        self.handler = handler
        self.json = json
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def usable(self) -> bool:
        handler = self.handler
        root = logging.getLogger()
        return (
            not ACCESS.handlers
            and not ACCESS.filters
            and ACCESS.propagate
            and root.handlers == [handler]
            and not handler.filters
            and ACCESS.isEnabledFor(logging.INFO)
        )

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            fmt = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            self._stamp = time.strftime(fmt, time.gmtime(now) if self.json else time.localtime(now))
        return self._stamp


# The direct path of the handler setup_logging installed last (None before it runs).
_fast: _FastAccess | None = None


def flush_access() -> None:
    """Write the buffered access lines now."""
    fast = _fast
    if fast is None or not fast.lines:
        return
    handler = fast.handler
    lines, fast.lines = fast.lines, []
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
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    client, method, target, status, bytes_in, bytes_out, seconds, upstream, port, host = record[:10]
    ms = round(seconds * 1000, 1)
    message = '%s :%d %s "%s %s" %d in=%d out=%d %.1fms upstream=%s' % (
        client,
        port,
        host,
        method,
        target,
        status,
        bytes_in,
        bytes_out,
        ms,
        upstream,
    )
    if record.action is not None:  # a registry route
        message += " user=%s action=%s repository=%s reference=%s upload=%s" % (
            record.user or "anonymous",
            record.action,
            record.repository or "-",
            record.reference or "-",
            record.upload or "-",
        )
    fast = _fast
    if fast is not None and fast.usable():
        now = time.time()
        msecs = int((now - int(now)) * 1000)
        if fast.json:
            fields = _fields(record, ms)
            line = json.dumps(
                {
                    "ts": f"{fast.stamp(now)}.{msecs:03d}Z",
                    "level": "info",
                    "logger": "certproxy.access",
                    "msg": message,
                    **fields,
                },
                separators=(",", ":"),
            )
        else:
            line = f"{fast.stamp(now)},{msecs:03d} INFO certproxy.access: {message}"
        lines = fast.lines
        lines.append(line)
        if len(lines) >= ACCESS_BATCH:
            flush_access()
        return
    fields = _fields(record, ms)
    ACCESS.info("%s", message, extra=fields)


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
