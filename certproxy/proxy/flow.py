"""Who pauses whom, for one client connection and the upstream connection of
the request it is answering.

How this works: bytes pass both ways between the two connections, and each
side's reading stops while the other side cannot take more, so a multi-GB
layer moves at the pace of the slower side with flat memory:

- the client's reading stops while the upstream connection's write buffer is
  full (``upstream_writable``), and while a request waits (``waiting``, asked of
  the client connection: the request being answered has no upstream connection
  for its body yet, or a later request waits its turn);
- the upstream's reading stops while the client's write buffer is full
  (``client_writable``), including for an upstream connection attached later.

``FlowControl`` holds these facts and is the one place that pauses or resumes
reading on their account. The transports apply it (``UpstreamConnection`` also
remembers that it is paused, so that its silence then is not a timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Reading(Protocol):
    """A client transport's reading switch."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class UpstreamReading(Protocol):
    """An upstream connection's reading switch (``UpstreamConnection.pause_reading``)."""

    def pause_reading(self, paused: bool) -> None: ...


class FlowControl:
    __slots__ = ("waiting", "transport", "reading_paused", "upstream_full", "client_full", "upstream")

    def __init__(self, waiting: Callable[[], bool]) -> None:
        self.waiting = waiting
        self.transport: Reading | None = None
        self.reading_paused = False  # the client's reading
        self.upstream_full = False  # the upstream connection's write buffer is full
        self.client_full = False  # the client's write buffer is full
        self.upstream: UpstreamReading | None = None

    def update(self) -> None:
        """Pause or resume the client's reading as the facts now say."""
        want = self.upstream_full or self.waiting()
        if want != self.reading_paused and self.transport is not None:
            self.reading_paused = want
            if want:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def client_writable(self, writable: bool) -> None:
        self.client_full = not writable
        if self.upstream is not None:
            self.upstream.pause_reading(not writable)

    def upstream_writable(self, writable: bool) -> None:
        if self.upstream_full == writable:
            self.upstream_full = not writable
            self.update()

    def attach(self, upstream: UpstreamReading) -> None:
        """The request being answered has this upstream connection from now on."""
        self.upstream = upstream
        if self.client_full:
            upstream.pause_reading(True)

    def detach(self) -> None:
        """The request being answered is done with its upstream connection."""
        self.upstream = None
        self.upstream_writable(True)
