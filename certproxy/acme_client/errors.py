"""Errors of the ACME client, translated at the boundary.

Everything the ``acme`` library, ``requests`` or the CA can throw becomes one
``AcmeError`` carrying what the caller needs: the CA's problem type and
detail (shown to the operator as is), when to retry (``retry_after``), and
whether retrying can help at all (``permanent``).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the acme library is loaded by the client, when an order is due
    from acme import messages

PROBLEM_PREFIX = "urn:ietf:params:acme:error:"
# Problems that retrying with the same configuration cannot fix.
PERMANENT_PROBLEMS = frozenset(
    {
        "rejectedIdentifier",
        "unsupportedIdentifier",
        "caa",
        "invalidContact",
        "unsupportedContact",
        "externalAccountRequired",
        "userActionRequired",
    }
)


class AcmeError(Exception):
    def __init__(
        self,
        message: str,
        *,
        problem_type: str | None = None,
        retry_after: dt.datetime | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.problem_type = problem_type
        self.retry_after = retry_after
        self.permanent = permanent


def parse_retry_after(value: str | None, now: dt.datetime) -> dt.datetime | None:
    """``Retry-After`` as seconds or an HTTP date; None when absent or odd."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + dt.timedelta(seconds=min(int(value), 7 * 86400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


def _problem_text(err: messages.Error) -> tuple[str, str]:
    typ = err.typ or PROBLEM_PREFIX + "serverInternal"
    detail = (err.detail or err.title or "").strip()
    for sub in getattr(err, "subproblems", None) or ():
        detail += f"; {getattr(sub, 'detail', '')}"
    return typ, detail


def translate(
    exc: BaseException,
    *,
    stage: str,
    headers: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> AcmeError:
    """One ``AcmeError`` for whatever the ACME exchange raised during ``stage``."""
    import requests
    from acme import errors as acme_errors
    from acme import messages

    now = now or dt.datetime.now(dt.UTC)
    retry_after = parse_retry_after((headers or {}).get("Retry-After"), now)
    if isinstance(exc, AcmeError):
        return exc
    if isinstance(exc, messages.Error):
        typ, detail = _problem_text(exc)
        code = typ.removeprefix(PROBLEM_PREFIX)
        permanent = code in PERMANENT_PROBLEMS or (code == "unauthorized" and stage == "order")
        return AcmeError(
            f"{stage}: {typ}: {detail}", problem_type=typ, retry_after=retry_after, permanent=permanent
        )
    if isinstance(exc, acme_errors.ValidationError):
        parts = []
        problem: str | None = None
        for authzr in exc.failed_authzrs:
            ident = authzr.body.identifier.value
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    problem, detail = _problem_text(challb.error)
                    parts.append(f"{ident}: {problem}: {detail}")
        return AcmeError(
            f"{stage}: challenge failed: " + ("; ".join(parts) or str(exc)),
            problem_type=problem,
            retry_after=retry_after,
        )
    if isinstance(exc, acme_errors.TimeoutError):
        return AcmeError(f"{stage}: the CA did not finish in time", retry_after=retry_after)
    if isinstance(exc, requests.exceptions.SSLError):
        return AcmeError(
            f"{stage}: TLS error talking to the ACME server "
            f"(set CERTPROXY_ACME_CA_BUNDLE for a private CA): {_first_line(exc)}"
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return AcmeError(f"{stage}: cannot reach the ACME server: {_first_line(exc)}")
    if isinstance(exc, (acme_errors.Error, requests.exceptions.RequestException, ValueError)):
        return AcmeError(f"{stage}: {type(exc).__name__}: {_first_line(exc)}", retry_after=retry_after)
    return AcmeError(f"{stage}: unexpected {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]  # whole: only a table may shorten it
