"""What runs per request for the access log and the listener's metrics: the text of an
access line, the buffer of lines not yet written, and the listener's counters.

``service/logs.py`` owns the logging set-up around the lines (which handler, when
they are written) and ``service/metrics.py`` turns the counters into metric families
when Prometheus scrapes; the work done for every request is here, in the data
plane's compiled modules.
"""

from __future__ import annotations

import time
from typing import Final

from .routes import AccessRecord

LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")


def tenths_of_ms(seconds: float) -> int:
    """A duration in tenths of a millisecond, rounded: what an access line shows."""
    return int(seconds * 10000.0 + 0.5) if seconds > 0 else 0


def message(record: AccessRecord) -> str:
    """An access line's message: the request, its answer and, on a registry route, what
    the request was as a call of the registry API."""
    tenths = tenths_of_ms(record.seconds)
    text = (
        f'{record.client} :{record.port} {record.host} "{record.method} {record.target}" '
        f"{record.status} in={record.bytes_in} out={record.bytes_out} {tenths // 10}.{tenths % 10}ms "
        f"upstream={record.upstream}"
    )
    if record.action is not None:  # a registry route
        text += (
            f" user={record.user or 'anonymous'} action={record.action}"
            f" repository={record.repository or '-'} reference={record.reference or '-'}"
            f" upload={record.upload or '-'}"
        )
    return text


class AccessLines:
    """Access lines formatted and waiting to be written: ``add_text`` makes a line as the
    text formatter of ``service/logs.py`` would, the time stamp made once a second."""

    def __init__(self, json: bool) -> None:
        self.json = json
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            fmt = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            self._stamp = time.strftime(fmt, time.gmtime(now) if self.json else time.localtime(now))
        return self._stamp

    def add_text(self, text: str, now: float) -> int:
        """Keep the text line of ``text`` (a message) logged at ``now``; how many lines
        are waiting."""
        msecs = int((now - int(now)) * 1000)
        lines = self.lines
        lines.append(f"{self.stamp(now)},{msecs:03d} INFO certproxy.access: {text}")
        return len(lines)


class RouteMetrics:
    """One listener's figures (the data plane's ``RouteStats``): plain numbers on the
    request path, with no lock and no label lookup, turned into metric families
    only when Prometheus scrapes (``service/metrics.py``)."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.by_class = [0] * len(STATUS_CLASSES)
        self.bytes_in = 0
        self.bytes_out = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.latency_sum = 0.0

    def request(self, status: int, bytes_in: int, bytes_out: int) -> None:
        self.by_class[min(max(status // 100, 1), 5) - 1] += 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def upstream_response(self, seconds: float) -> None:
        bucket = 0  # the first bucket whose bound is not below ``seconds`` (bisect_left's)
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            bucket += 1
        self.latency_counts[bucket] += 1
        self.latency_sum += seconds


__all__ = ["LATENCY_BUCKETS", "STATUS_CLASSES", "AccessLines", "RouteMetrics", "message", "tenths_of_ms"]
