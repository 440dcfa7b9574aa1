"""The plain-HTTP listener: redirects, bad Host, ACME challenge files, traversal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from support.procs import CertproxyProcess, free_port
from support.rawhttp import exchange

pytestmark = pytest.mark.integration


@pytest.fixture
def plain(certproxy_factory: Callable[..., CertproxyProcess], store: Path) -> CertproxyProcess:
    # Two TLS routes, neither on 443: redirects go to the lowest port.
    low, high = sorted((free_port(), free_port()))
    return certproxy_factory({high: "http://127.0.0.1:9", low: "http://127.0.0.1:9"}, store)


def _low(cp: CertproxyProcess) -> int:
    return min(cp.routes)


@pytest.mark.parametrize("method, status", [("GET", 301), ("HEAD", 301), ("POST", 308),
                                            ("PUT", 308), ("DELETE", 308)])
async def test_redirects_keep_path_and_query(method: str, status: int, plain: CertproxyProcess) -> None:
    body = "Content-Length: 2\r\n\r\nab" if method in ("POST", "PUT") else "\r\n"
    resp = await exchange(plain.http_port, (
        f"{method} /v2/x/tags/list?n=10&last=a%2Fb HTTP/1.1\r\nHost: reg.example.com\r\n{body}"
    ).encode(), method=method)
    assert resp.status == status
    assert resp.header("Location") == [f"https://reg.example.com:{_low(plain)}/v2/x/tags/list?n=10&last=a%2Fb"]


@pytest.mark.parametrize("host_lines", [
    "", "Host: \r\n", "Host: bad host\r\n", "Host: evil.com/x\r\n", "Host: a:99999\r\n",
    "Host: a.example\r\nHost: b.example\r\n",
])
async def test_missing_or_malformed_host_gets_400(host_lines: str, plain: CertproxyProcess) -> None:
    version = "HTTP/1.0" if not host_lines else "HTTP/1.1"
    resp = await exchange(plain.http_port, f"GET /x {version}\r\n{host_lines}\r\n".encode())
    assert resp.status == 400
    assert resp.header("Location") == []


async def test_challenge_files_are_served_and_nothing_else(plain: CertproxyProcess) -> None:
    challenges = plain.store / "challenges"
    (challenges / "tok-EN_1").write_text("tok-EN_1.thumbprint")
    (plain.store / "secret").write_text("never")
    ok = await exchange(plain.http_port,
                        b"GET /.well-known/acme-challenge/tok-EN_1 HTTP/1.1\r\nHost: reg.example.com\r\n\r\n")
    assert ok.status == 200 and ok.body == b"tok-EN_1.thumbprint"
    for target in (
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/../secret",
        "/.well-known/acme-challenge/..%2fsecret",
        "/.well-known/acme-challenge/%2e%2e%2fsecret",
        "/.well-known/acme-challenge/%2e%2e",
        "/.well-known/acme-challenge/..",
        "/.well-known/acme-challenge/tok-EN_1%00",
        "/.well-known/acme-challenge/tok-EN_1/x",
        "/.well-known/acme-challenge/../live/localhost/privkey.pem",
        "/.well-known/acme-challenge/",
    ):
        resp = await exchange(plain.http_port,
                              f"GET {target} HTTP/1.1\r\nHost: reg.example.com\r\n\r\n".encode())
        assert resp.status in (400, 404), target
        assert b"never" not in resp.body and b"PRIVATE KEY" not in resp.body, target


async def test_healthz_answers_on_the_plain_listener(plain: CertproxyProcess) -> None:
    resp = await exchange(plain.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200 and resp.header("Content-Type")[0].startswith("application/json")
    report = json.loads(resp.body)
    assert report["status"] in ("ok", "degraded") and report["certificates"]
    assert resp.header("Cache-Control") == ["no-store"]
