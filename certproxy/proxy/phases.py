"""The phases of one exchange, kept as h11's ``_state.py`` keeps its states: an
enum per side and, in one table, the moves allowed between them.

How this works: ``Exchange`` changes a phase only through ``advance``, which
refuses a move the table does not list. Such a move is a defect in certproxy
(``PhaseError``): the request fails rather than going on in a state nobody
designed.

The request side (the client's bytes):

- ``BODY``: the head is in; the body, or only the message's end, is still due.
  It goes upstream as it comes, or waits in the exchange until an upstream
  connection is attached.
- ``DISCARD``: the body is still due but not wanted: certproxy answered by
  itself, the upstream answered early, or the body was refused. The connection
  closes after the answer.
- ``COMPLETE``: the whole request is in.

The response side (what certproxy writes to the client):

- ``WAITING``: nothing written yet; a failure now becomes certproxy's own answer.
- ``STREAMING``: the head went out; a failure now cuts the connection, so a
  short body never looks whole.
- ``COMPLETE``: the whole answer went out.

Facts that are not phases stay plain fields of the exchange: whether body
bytes went upstream (no resend after that), how the answer is framed, whether
the connection closes after it, whether the one resend was used.
"""

from __future__ import annotations

import enum
from typing import TypeVar


class RequestPhase(enum.Enum):
    _next: tuple[RequestPhase, ...]  # the row of TRANSITIONS, set below

    BODY = "body"
    DISCARD = "discard"
    COMPLETE = "complete"


class ResponsePhase(enum.Enum):
    _next: tuple[ResponsePhase, ...]  # the row of TRANSITIONS, set below

    WAITING = "waiting"
    STREAMING = "streaming"
    COMPLETE = "complete"


Phase = RequestPhase | ResponsePhase

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    RequestPhase.BODY: frozenset({RequestPhase.DISCARD, RequestPhase.COMPLETE}),
    RequestPhase.DISCARD: frozenset({RequestPhase.COMPLETE}),
    RequestPhase.COMPLETE: frozenset(),
    # certproxy's own answers go out whole: WAITING -> COMPLETE in one step
    ResponsePhase.WAITING: frozenset({ResponsePhase.STREAMING, ResponsePhase.COMPLETE}),
    ResponsePhase.STREAMING: frozenset({ResponsePhase.COMPLETE}),
    ResponsePhase.COMPLETE: frozenset(),
}


class PhaseError(RuntimeError):
    """A move the table does not allow: a defect in certproxy."""


P = TypeVar("P", RequestPhase, ResponsePhase)


# Each phase also carries its row as a tuple: ``advance`` runs a few times per request,
# and a tuple's ``in`` compares enum members by identity, without hashing them.
for _phase, _row in TRANSITIONS.items():
    setattr(_phase, "_next", tuple(_row))  # noqa: B010


def advance(old: P, new: P) -> P:
    """``new``, when the table allows the move from ``old``."""
    if new not in old._next:
        raise PhaseError(f"{old.name} -> {new.name}")
    return new
