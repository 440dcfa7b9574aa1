"""Several worker processes on the same ports (``CERTPROXY_WORKERS``).

How this works: ``serve_workers`` forks the workers before any event loop or
thread exists. Each worker is a whole certproxy: its listeners are opened with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers; each
has its own reloader, so every worker follows the store on its own. Worker 0
alone maintains certificates (ACME, through the same store lock replicas
use); it starts first and the others once it is ready, so the store's layout
and the bootstrap certificate are made once, and a start-up mistake (a port
in use, a bad file) is reported once, with exit code 2, before the others
start. The parent forwards SIGTERM, SIGINT and SIGHUP to every worker and
exits when all have. A worker that exits on its own stops the others, and the
parent exits with its code: the container's restart policy then starts the
whole set again, as it would restart a single process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("certproxy")

READY_TIMEOUT = 120.0  # seconds a worker may take to open its listeners
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def instance_id() -> str:
    """This process's name in a set of replicas: random, made once per process (every
    replica in a container is pid 1, and on a host network all share one hostname)."""
    if _INSTANCE[0] != os.getpid():
        _INSTANCE[:] = [os.getpid(), secrets.token_hex(4)]
    return str(_INSTANCE[1])


_INSTANCE: list[object] = [0, ""]


@dataclass(frozen=True)
class Worker:
    index: int = 0
    count: int = 1
    replicated: bool = False  # other certproxy processes (replicas) share the ports too

    @property
    def maintains_certificates(self) -> bool:
        return self.index == 0

    @property
    def shares_ports(self) -> bool:
        return self.count > 1 or self.replicated

    def describe(self) -> dict[str, object]:
        return {
            "index": self.index,
            "count": self.count,
            "pid": os.getpid(),
            "instance": instance_id(),
            "maintains_certificates": self.maintains_certificates,
        }


Start = Callable[[Worker, Callable[[], None]], int]


def serve_workers(count: int, start: Start, *, replicated: bool = False) -> int:
    """Run ``start(worker, ready)`` in ``count`` forked processes; return the exit code."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        for index in range(count):
            if stopping:
                break
            pid, ready = _spawn(Worker(index, count, replicated), start, previous)
            children[pid] = index
            code = _wait_ready(pid, ready)
            if code is not None:  # it exited before opening its listeners
                del children[pid]
                _stop_all(children)
                return code
        log.info("%d workers serving", count)
        return _wait_all(children, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawn(worker: Worker, start: Start, previous: Iterable[signal.Signals]) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_fd)
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL)  # its event loop installs its own handlers

        def ready() -> None:
            with contextlib.suppress(OSError):
                os.write(write_fd, b"1")
                os.close(write_fd)

        code = 1
        try:
            code = start(worker, ready)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _wait_ready(pid: int, read_fd: int) -> int | None:
    """None once the worker says it is ready; its exit code if it ends first."""
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([read_fd], [], [], 0.5)
            if readable:
                if os.read(read_fd, 1):
                    return None
                _, status = os.waitpid(pid, 0)  # closed without a word: it ended
                return os.waitstatus_to_exitcode(status) or 1
        log.error("worker pid %d did not open its listeners within %g s", pid, READY_TIMEOUT)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return 1
    finally:
        os.close(read_fd)


def _stop_all(children: dict[int, int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    while children:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        children.pop(pid, None)


def _wait_all(children: dict[int, int], stopping: Callable[[], bool]) -> int:
    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        exit_code = os.waitstatus_to_exitcode(status)
        if not stopping() and code == 0:
            log.error("worker %d exited with %d: stopping the other workers", index, exit_code)
            code = exit_code or 1
            for other in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGTERM)
    return code
