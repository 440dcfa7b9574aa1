"""The exchange's phases: the table of allowed moves, and an exchange that keeps to it."""

from __future__ import annotations

import pytest

from certproxy.proxy.phases import TRANSITIONS, PhaseError, RequestPhase, ResponsePhase, advance
from support.inproc import make_plane, settle
from test_protocol import GET, responses


def test_every_phase_has_a_row_and_the_last_ones_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(RequestPhase) | set(ResponsePhase)
    assert TRANSITIONS[RequestPhase.COMPLETE] == TRANSITIONS[ResponsePhase.COMPLETE] == frozenset()
    for phase, nexts in TRANSITIONS.items():
        assert phase not in nexts and all(type(n) is type(phase) for n in nexts)


@pytest.mark.parametrize("old, new", [
    (RequestPhase.COMPLETE, RequestPhase.BODY), (RequestPhase.DISCARD, RequestPhase.BODY),
    (RequestPhase.COMPLETE, RequestPhase.DISCARD), (ResponsePhase.STREAMING, ResponsePhase.WAITING),
    (ResponsePhase.COMPLETE, ResponsePhase.STREAMING), (ResponsePhase.COMPLETE, ResponsePhase.COMPLETE),
])
def test_a_move_the_table_does_not_list_is_refused(old: RequestPhase | ResponsePhase,
                                                     new: RequestPhase | ResponsePhase) -> None:
    with pytest.raises(PhaseError, match=f"{old.name} -> {new.name}"):
        advance(old, new)  # type: ignore[type-var]


async def test_an_exchange_walks_the_table() -> None:
    plane = make_plane()
    conn, client = plane.connect_client()
    conn.data_received(b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: reg\r\nContent-Length: 4\r\n\r\nab")
    await settle()
    ex = conn.queue[0]
    assert (ex.request, ex.response) == (RequestPhase.BODY, ResponsePhase.WAITING) and ex.body_sent
    plane.upstream_protocol().data_received(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    # answered early: the rest of the body is not wanted, and the connection closes
    assert (ex.request, ex.response) == (RequestPhase.DISCARD, ResponsePhase.COMPLETE) and ex.done
    assert [r[0] for r in responses(client.take())] == [413] and client.closed
    conn2, client2 = plane.connect_client()
    conn2.data_received(GET)
    await settle()
    ex2 = conn2.queue[0]
    assert ex2.request is RequestPhase.COMPLETE and ex2.response is ResponsePhase.WAITING
    plane.upstream_protocol().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfi")
    assert ex2.response is ResponsePhase.STREAMING
    plane.upstream_protocol().data_received(b"ve")
    assert ex2.response is ResponsePhase.COMPLETE and not conn2.queue
