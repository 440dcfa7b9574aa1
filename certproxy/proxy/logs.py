"""Logging set-up: human lines or JSON, on stderr.

Access lines go to the ``certproxy.access`` logger with their fields in
``extra`` so the JSON formatter can emit them as keys. Nothing logged here
ever contains a header value other than the request target.
"""

from __future__ import annotations

import json
import logging
import sys
import time

ACCESS = logging.getLogger("certproxy.access")

_ACCESS_FIELDS = ("client", "method", "target", "status", "bytes_in", "bytes_out",
                  "duration_ms", "upstream", "port")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _ACCESS_FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, separators=(",", ":"))


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True


def access(client: str, method: str, target: str, status: int, bytes_in: int,
           bytes_out: int, duration: float, upstream: str, port: int) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    ms = round(duration * 1000, 1)
    ACCESS.info(
        '%s "%s %s" %d in=%d out=%d %.1fms upstream=%s',
        client, method, target, status, bytes_in, bytes_out, ms, upstream,
        extra={"client": client, "method": method, "target": target, "status": status,
               "bytes_in": bytes_in, "bytes_out": bytes_out, "duration_ms": ms,
               "upstream": upstream, "port": port},
    )
