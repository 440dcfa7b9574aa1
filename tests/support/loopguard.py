"""A guard that fails a test when certproxy's code holds up the event loop.

asyncio's debug mode reports every callback that runs for 100 ms or more, but
not whose time it was. A test's own task spends its steps in the test's code
(issuing certificates with trustme, writing files) as much as in the
certproxy coroutines it awaits, and on a busy machine a 20 ms step takes
150 ms of wall time while the thread waits for a CPU. So the guard measures
each callback the loop runs (every ``Handle._run``) itself:

- how long it held the loop's thread: its wall time less the time the thread
  sat runnable on the kernel's run queue (the second field of
  ``/proc/self/task/TID/schedstat``), i.e. the time it computed or blocked
  (a sleep, a disk write, a lock) and not the time other processes had the CPU;
- whose code that was: a sampler thread looks at the loop thread's stack every
  few milliseconds while a callback runs; a sample is certproxy's when a frame
  of ``certproxy/`` is on the stack (certproxy's own code, or what it calls: a
  library, or a test double it was handed).

A callback whose certproxy share of the held time is ``limit`` (100 ms) or more
is reported; what the test's own code does on the loop is not.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

CERTPROXY = Path(__file__).resolve().parents[2] / "certproxy"

_Handle = asyncio.events.Handle


@dataclass
class _Run:
    """One callback being run: its start and the samples of its stack."""

    started: float
    run_delay: int  # ns on the run queue before it started
    samples: list[tuple[float, str | None]] = field(default_factory=list)
    done: bool = False


@dataclass
class Slow:
    """A callback that ran for ``limit`` or more of wall time, with the guard's account of it."""

    handle: str
    wall: float  # seconds from start to end
    waited: float  # of which runnable but not running (the machine was busy)
    certproxy: float  # of the rest (held), the part spent with certproxy's code on the stack
    where: str | None  # certproxy's innermost frame seen most often

    @property
    def held(self) -> float:
        return self.wall - self.waited

    def describe(self) -> str:
        return (f"certproxy held the event loop {self.certproxy * 1000:.0f} ms in one callback "
                f"({self.wall * 1000:.0f} ms wall, {self.waited * 1000:.0f} ms of it waiting for a CPU), "
                f"at {self.where or '?'}: {self.handle}")


class LoopGuard:
    """Watch the running loop from ``start()`` to ``stop()``; ``reports`` lists each callback
    in which certproxy held it ``limit`` seconds or more, ``slow`` every callback that took
    ``limit`` of wall time, whoever held it."""

    def __init__(self, limit: float = 0.1, interval: float = 0.003, roots: tuple[Path, ...] = (CERTPROXY,)
                 ) -> None:
        self.limit = limit
        self.interval = interval
        self.roots = tuple(f"{r}{os.sep}" for r in roots)
        self.slow: list[Slow] = []
        self.reports: list[str] = []
        self._ident: int | None = None
        self._current: _Run | None = None
        self._original: Any = None
        self._sampler: threading.Thread | None = None
        self._stopping = threading.Event()
        self._schedstat: int | None = None
        self._is_ours: dict[str, bool] = {}
        self._wrapper_code: object = None

    # -- measuring ------------------------------------------------------------------
    def _run_delay(self) -> int:
        if self._schedstat is None:
            return 0
        try:
            return int(os.pread(self._schedstat, 128, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    def _certproxy_frame(self, frame: FrameType | None, boundary: object) -> str | None:
        """The innermost frame of certproxy's on this stack, up to the loop's own frames."""
        while frame is not None and frame.f_code is not boundary:
            filename = frame.f_code.co_filename
            ours = self._is_ours.get(filename)
            if ours is None:
                ours = self._is_ours[filename] = filename.startswith(self.roots)
            if ours:
                return f"{os.path.relpath(filename, CERTPROXY.parent)}:{frame.f_lineno} {frame.f_code.co_name}"
            frame = frame.f_back
        return None

    def _sample(self) -> None:
        boundary = self._wrapper_code
        while not self._stopping.wait(self.interval):
            run = self._current
            if run is None or run.done or self._ident is None:
                continue
            frame = sys._current_frames().get(self._ident)  # noqa: SLF001
            where = self._certproxy_frame(frame, boundary)
            del frame
            if not run.done:
                run.samples.append((time.perf_counter(), where))

    def _account(self, handle: _Handle, run: _Run) -> None:
        end = time.perf_counter()
        wall = end - run.started
        if wall < self.limit:
            return
        waited = max(0.0, (self._run_delay() - run.run_delay) / 1e9)
        held = max(0.0, wall - waited)
        ours = 0.0
        previous, last = run.started, None
        seen: collections.Counter[str] = collections.Counter()
        for at, where in run.samples:
            if where is not None:
                ours += at - previous
                seen[where] += 1
            previous, last = at, where
        if run.samples:
            if last is not None:
                ours += end - previous
            share = ours / wall
        else:  # never sampled (the thread held the GIL throughout): judge by the callback itself
            share = 1.0 if self._callback_is_ours(handle) else 0.0
        slow = Slow(_describe(handle), wall, waited, held * share, seen.most_common(1)[0][0] if seen else None)
        self.slow.append(slow)
        if slow.certproxy >= self.limit:
            self.reports.append(slow.describe())

    def _callback_is_ours(self, handle: _Handle) -> bool:
        callback = handle._callback  # noqa: SLF001
        owner = getattr(callback, "__self__", None)
        code = None
        if isinstance(owner, asyncio.Task):
            coro = owner.get_coro()
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        else:
            code = getattr(getattr(callback, "func", callback), "__code__", None)
        return code is not None and code.co_filename.startswith(self.roots)

    # -- switching on and off -------------------------------------------------------
    def start(self) -> None:
        """Call from the loop's thread (in a coroutine or a callback of the loop to watch)."""
        asyncio.get_running_loop()  # only with a loop running in this thread
        self._ident = threading.get_ident()
        try:
            self._schedstat = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:  # a kernel without scheduler statistics: wall time, as asyncio measures
            self._schedstat = None
        guard, original = self, _Handle._run  # noqa: SLF001
        self._original = original

        def _run(handle: _Handle) -> None:
            if threading.get_ident() != guard._ident or guard._current is not None:
                return original(handle)  # type: ignore[no-any-return]
            run = _Run(time.perf_counter(), guard._run_delay())
            guard._current = run
            try:
                return original(handle)  # type: ignore[no-any-return]
            finally:
                run.done = True
                guard._current = None
                if guard._ident is not None:
                    guard._account(handle, run)

        self._wrapper_code = _run.__code__
        _Handle._run = _run  # type: ignore[method-assign]  # noqa: SLF001
        self._sampler = threading.Thread(target=self._sample, name="loop-guard", daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        if self._original is not None:
            _Handle._run = self._original  # type: ignore[method-assign]  # noqa: SLF001
            self._original = None
        self._ident = None
        self._stopping.set()
        if self._sampler is not None:
            self._sampler.join(5)
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None


def _describe(handle: _Handle) -> str:
    text = asyncio.base_events._format_handle(handle)  # type: ignore[attr-defined]  # noqa: SLF001
    return text if len(text) <= 400 else text[:400] + "..."
