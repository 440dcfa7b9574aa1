"""The no_blocking guard (support/loopguard.py) itself: it reports certproxy's code holding
the event loop, and neither the test's own code nor a busy machine."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from certproxy.acme_client import AcmeSettings
from certproxy.acme_client.manager import CertManager
from certproxy.certs import FileStore
from support.loopguard import LoopGuard
from test_acme_unit import FakeIssuer

BLOCK = 0.3


def _manager(tmp_path: Path, ca: trustme.CA, clock: Callable[[], dt.datetime]) -> CertManager:
    store = FileStore(tmp_path)
    store.ensure_layout()
    settings = AcmeSettings(directory="https://ca.test/dir", domains=("reg.example.com",), retry_min=1)
    return CertManager(store, settings, FakeIssuer(ca), clock=clock, jitter=lambda: 0.5)  # type: ignore[arg-type]


def _clock(thread: int, action: Callable[[], object]) -> Callable[[], dt.datetime]:
    """A clock that runs ``action`` the first time it is read on ``thread`` (the loop's)."""
    done: list[bool] = []

    def clock() -> dt.datetime:
        if threading.get_ident() == thread and not done:
            done.append(True)
            action()
        return dt.datetime.now(dt.timezone.utc)
    return clock


def _sleepy_clock_on(thread: int) -> Callable[[], dt.datetime]:
    """Blocks the first time it is read on the loop's thread: BLOCK seconds."""
    return _clock(thread, lambda: time.sleep(BLOCK))


def _compute(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_a_certproxy_coroutine_that_blocks_the_loop_is_reported(tmp_path: Path, ca: trustme.CA) -> None:
    """certproxy's coroutine awaited by the test's own task: the step is the test's Task,
    the time is certproxy's (CertManager.maintain reads its clock on the loop)."""
    manager = await asyncio.to_thread(_manager, tmp_path, ca, _sleepy_clock_on(threading.get_ident()))
    guard = LoopGuard()
    guard.start()
    try:
        await manager.maintain()
    finally:
        guard.stop()
    assert len(guard.reports) == 1, guard.reports
    [slow] = [s for s in guard.slow if s.certproxy >= guard.limit]
    assert slow.where is not None and slow.where.startswith("certproxy/acme_client/manager.py:")
    assert "maintain" in slow.where and "test_a_certproxy_coroutine" in slow.handle
    assert slow.certproxy >= 0.8 * BLOCK


async def test_a_certproxy_callback_that_blocks_is_reported(tmp_path: Path, ca: trustme.CA) -> None:
    manager = await asyncio.to_thread(_manager, tmp_path, ca, _sleepy_clock_on(threading.get_ident()))
    guard = LoopGuard()
    guard.start()
    try:
        asyncio.get_running_loop().call_soon(manager.decide)
        await asyncio.sleep(0)  # the callback runs before this task's next step
        await asyncio.sleep(0)
    finally:
        guard.stop()
    assert len(guard.reports) == 1, guard.reports
    assert "certproxy/acme_client/manager.py" in guard.reports[0] and "decide" in guard.reports[0]
    assert "certproxy held the event loop" in guard.reports[0]


async def test_the_tests_own_code_on_the_loop_is_not_counted(no_blocking: LoopGuard, ca: trustme.CA) -> None:
    """A test's own task, and a callback of the test's, blocking or issuing certificates:
    slow callbacks, none of them certproxy's (and the fixture passes)."""
    time.sleep(BLOCK)
    for _ in range(5):
        ca.issue_cert("reg.example.com")
    asyncio.get_running_loop().call_soon(time.sleep, BLOCK)
    asyncio.get_running_loop().call_soon(lambda: time.sleep(BLOCK))
    await asyncio.sleep(0)
    assert len(no_blocking.slow) >= 2 and all(s.certproxy == 0 for s in no_blocking.slow)
    assert any(s.held >= BLOCK * 0.8 for s in no_blocking.slow)
    assert no_blocking.reports == []


@pytest.fixture
def one_busy_cpu() -> Iterator[None]:
    """This thread and three CPU-bound processes pinned to one CPU: each runs a third of the
    time or less, as on a machine that is busy with other work."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    code = (f"import os, sys; os.sched_setaffinity(0, {{{cpu}}}); print('ready', flush=True)\n"
            "while True: pass\n")
    hogs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for hog in hogs:
            assert hog.stdout is not None and hog.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {cpu})  # this thread only
        yield
    finally:
        os.sched_setaffinity(0, before)
        for hog in hogs:
            hog.kill()
            hog.wait(10)


async def test_time_spent_waiting_for_a_cpu_is_not_counted(one_busy_cpu: None, tmp_path: Path,
                                                            ca: trustme.CA) -> None:
    """certproxy's callback computes for 50 ms on a CPU it shares with three busy processes:
    about 200 ms of wall time, of which 50 ms held the loop."""
    busy_clock = _clock(threading.get_ident(), lambda: _compute(0.05))
    manager = await asyncio.to_thread(_manager, tmp_path, ca, busy_clock)
    guard = LoopGuard()
    guard.start()
    try:
        asyncio.get_running_loop().call_soon(manager.decide)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    finally:
        guard.stop()
    decided = [s for s in guard.slow if "decide" in s.handle]
    assert len(decided) == 1, guard.slow
    [slow] = decided
    # Over the limit in wall time (asyncio's own measure would have failed it), because the
    # machine was busy: the time it held the loop is under the limit.
    assert slow.wall >= guard.limit and slow.waited > 0
    assert slow.held < guard.limit and guard.reports == []
