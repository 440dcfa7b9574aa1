"""Shared fixtures: a trustme CA, a store holding a CA-issued pair, and
factories for the real servers (docker-registry, certproxy) that stop what
they start."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest
import trustme

from support.loopguard import LoopGuard
from support.procs import CertproxyProcess, start_certproxy, stop_process
from support.registry import Registry, start_registry

MEASUREMENTS: list[tuple[str, str]] = []


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs the suite on pytest-xdist workers (--dist loadgroup). Every test that
    runs a Docker engine goes to one worker, one after the other: the engines share their
    data root (support/engine.py's STATE, the image cache) and are heavy."""
    for item in items:
        if item.get_closest_marker("container"):
            item.add_marker(pytest.mark.xdist_group("engine"))


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="certproxy test CA")


@pytest.fixture(scope="session")
def ca_dir(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``ca.crt``, as skopeo's --*-cert-dir wants it."""
    folder = tmp_path_factory.mktemp("ca")
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    return folder


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def write_live(store: Path, name: str, ca: trustme.CA, *names: str) -> trustme.LeafCert:
    leaf = ca.issue_cert(*(names or (name,)))
    folder = store / "live" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (folder / "privkey.pem").write_bytes(leaf.private_key_pem.bytes())
    (folder / "privkey.pem").chmod(0o600)
    return leaf


@pytest.fixture
def store(tmp_path: Path, ca: trustme.CA) -> Path:
    """A store whose live/localhost pair is issued by the test CA."""
    root = tmp_path / "store"
    write_live(root, "localhost", ca, "localhost", "127.0.0.1")
    return root


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    started: list[Registry] = []

    def factory(**kwargs: object) -> Registry:
        reg = start_registry(tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(reg)
        return reg

    yield factory
    for reg in started:
        stop_process(reg.proc)


@pytest.fixture
def registry(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory()


@pytest.fixture
def certproxy_factory(tmp_path: Path) -> Iterator[Callable[..., CertproxyProcess]]:
    started: list[CertproxyProcess] = []

    def factory(routes: dict[int, str], store: Path, **kwargs: object) -> CertproxyProcess:
        cp = start_certproxy(tmp_path, routes, store, **kwargs)  # type: ignore[arg-type]
        started.append(cp)
        return cp

    yield factory
    for cp in started:
        stop_process(cp.proc)


@pytest.fixture(scope="session")
def measure() -> Callable[[str, str], None]:
    """Record a figure for the end-of-run summary (figures are reported, not asserted)."""
    def record(name: str, value: str) -> None:
        PENDING.append((name, value))
    return record


MEASUREMENT = "certproxy-measurement"
PENDING: list[tuple[str, str]] = []  # recorded in this process, not yet in a test report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Figures travel in the reports: with pytest-xdist they are recorded in the worker
    processes and reported (and written to build/measurements.json) by the controller."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    while PENDING:
        report.user_properties.append((MEASUREMENT, PENDING.pop(0)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == MEASUREMENT:
            MEASUREMENTS.append(tuple(value))  # type: ignore[arg-type]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not MEASUREMENTS or hasattr(config, "workerinput"):
        return
    terminalreporter.section("measurements")
    for name, value in MEASUREMENTS:
        terminalreporter.write_line(f"{name}: {value}")
    out = Path(__file__).resolve().parents[1] / "build" / "measurements.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(MEASUREMENTS), indent=2) + "\n")


@pytest.fixture
async def no_blocking() -> AsyncIterator[LoopGuard]:
    """Fail the test if certproxy's code holds up its event loop for 100 ms or more.

    For tests that run certproxy's own async code in-process (reloader, ACME
    manager, TLS state). What the test's own code does on the loop (issuing a
    certificate with trustme, writing a pair) is not counted, nor the time the
    loop's thread waits for a CPU on a busy machine: see support/loopguard.py.
    asyncio's debug mode stays on for its other checks (calls from the wrong
    thread, coroutines never awaited); its own slow-callback log is left to the guard.
    """
    loop = asyncio.get_running_loop()
    debug, slow = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 3600
    guard = LoopGuard()
    guard.start()
    try:
        yield guard
    finally:
        guard.stop()
        loop.set_debug(debug)
        loop.slow_callback_duration = slow
    assert not guard.reports, "\n".join(guard.reports)
