"""Shared fixtures: a trustme CA, a store holding a CA-issued pair, and
factories for the real servers (docker-registry, certproxy) that stop what
they start."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
import trustme

from support.loopguard import LoopGuard
from support.procs import CertproxyProcess, start_certproxy, stop_process
from support.registry import Registry, start_registry

MEASUREMENTS: list[tuple[str, str]] = []


# The modules whose tests run a Docker engine (marked `container`). `make test` runs the suite
# on pytest-xdist workers; these modules go to one worker, one test after the other: their
# engines share a data root (support/engine.py's STATE, the image cache), and they are the
# longest part of the run, so they start first while the other worker takes the rest.
ENGINE_MODULES = ("tests/test_container.py", "tests/test_container_access.py", "tests/test_swarm.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("container") and item.nodeid.split("::", 1)[0] not in ENGINE_MODULES:
            raise pytest.UsageError(f"{item.nodeid} runs a Docker engine: add its module to "
                                    "ENGINE_MODULES in tests/conftest.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduler for --dist load, loadgroup, loadscope or loadfile, with every
    test of ENGINE_MODULES in one work unit ("engine"). (Its own xdist_group mark does not
    group with pytest 9.2, whose node ids cannot be rewritten any more.)"""
    from xdist.scheduler import LoadFileScheduling, LoadGroupScheduling, LoadScopeScheduling

    base = {"load": LoadGroupScheduling, "loadgroup": LoadGroupScheduling, "loadscope": LoadScopeScheduling,
            "loadfile": LoadFileScheduling}.get(config.getvalue("dist"))
    if base is None:
        return None

    class OneEngineAtATime(base):  # type: ignore[valid-type,misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.split("::", 1)[0] in ENGINE_MODULES:
                return "engine"
            return super()._split_scope(nodeid)  # type: ignore[no-any-return]

    return OneEngineAtATime(config, log)


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
