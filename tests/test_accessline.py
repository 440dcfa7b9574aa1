"""The access line's text and the listener's counters (proxy/accessline.py), held to the
plain definitions they replace: the ``%``-formatted line, with the duration within half a
tenth of a millisecond of the true one (ties round up), and ``bisect`` for the latency
bucket."""

from __future__ import annotations

import bisect
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from certproxy.proxy.accessline import LATENCY_BUCKETS, RouteMetrics, message
from certproxy.proxy.routes import AccessRecord

texts = st.text(max_size=30)  # any text: %, braces, quotes, spaces, non-ASCII
maybe = st.none() | texts
durations = st.one_of(st.floats(min_value=0, max_value=1e6, allow_nan=False),
                      st.sampled_from([0.0, 0.00005, 0.00015, 0.00125, 0.9999999, 5e-324]))
records = st.builds(AccessRecord, texts, texts, texts, st.integers(0, 999), st.integers(0, 2**63),
                    st.integers(0, 2**63), durations, texts, st.integers(0, 65535), texts,
                    maybe, maybe, maybe, maybe, maybe)


@settings(max_examples=500, deadline=None)
@given(records)
def test_the_line_is_the_plain_format_with_the_duration_to_a_tenth_of_a_millisecond(r: AccessRecord) -> None:
    line = message(r)
    head = '%s :%d %s "%s %s" %d in=%d out=%d ' % (r.client, r.port, r.host, r.method, r.target, r.status,
                                                   r.bytes_in, r.bytes_out)
    assert line.startswith(head)
    rest = line[len(head):]
    match = re.match(r"(\d+)\.(\d)ms upstream=", rest)
    assert match, rest
    shown = int(match.group(1)) + int(match.group(2)) / 10
    assert abs(shown - r.seconds * 1000) <= 0.05 + r.seconds * 1e-9
    tail = rest[match.end():]
    expected = r.upstream
    if r.action is not None:
        expected += " user=%s action=%s repository=%s reference=%s upload=%s" % (
            r.user or "anonymous", r.action, r.repository or "-", r.reference or "-", r.upload or "-")
    assert tail == expected


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=1e4, allow_nan=False), st.sampled_from(LATENCY_BUCKETS)))
def test_the_latency_bucket_is_bisect_lefts(seconds: float) -> None:
    stats = RouteMetrics("443")
    stats.upstream_response(seconds)
    assert stats.latency_counts.index(1) == bisect.bisect_left(LATENCY_BUCKETS, seconds)
    assert sum(stats.latency_counts) == 1 and stats.latency_sum == seconds
