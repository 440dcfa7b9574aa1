"""``certproxy doctor``: does the path from this machine to a registry work, and if not, why.

Synchronous, standard library and ``cryptography`` only: a client-side tool, run from
a laptop or a CI runner, never inside the proxy. The checks run in the order a push
needs them (``run``); each adds one ``Check`` to the report as it ends.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from .push import check_push
from .registry import check_api, check_challenge, check_clock, check_health, check_login
from .report import FAIL, Check, Report, render
from .session import CERTS_D_VAR, DEFAULT_IDLE, DEFAULT_SIZE, Options, Session, client_context
from .tls import check_protocol, check_redirect, check_tls, resolve
from .wire import Target

__all__ = ["CERTS_D_VAR", "DEFAULT_IDLE", "DEFAULT_SIZE", "Check", "Options", "Report", "render", "run"]


def run(options: Options, on_check: Callable[[Check], None] | None = None) -> Report:
    target = Target(options.host, options.port)
    report = Report(target.url("/"), on_check=on_check)
    s = Session(options, report, target, client_context(options.ca))
    s.repository = options.repository or f"certproxy-doctor/probe-{secrets.token_hex(4)}"
    if not resolve(s) or not check_tls(s):
        return report
    check_redirect(s)
    if check_api(s):
        check_challenge(s)
        check_login(s)
        check_protocol(s)
        login = report.get("auth.login")
        if login is None or login.status != FAIL:
            check_push(s)
    check_clock(s)
    check_health(s)
    return report
