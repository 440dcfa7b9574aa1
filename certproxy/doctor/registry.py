"""The registry behind the front: ``/v2/``, its login, its clock, and certproxy's ``/healthz``.

The login follows the registry's challenge as docker does: Basic credentials on the
API itself, or (Bearer) a token fetched from the realm with them. The password is
only sent over a connection whose certificate passed, to an ``https`` realm.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import ssl
from urllib.parse import urlencode, urlsplit

from .report import FAIL, INFO, OK, WARN
from .session import Session
from .wire import Answer, Request, Target, send

API_HEADER = "docker-distribution-api-version"
_PARAM = re.compile(r'(\w+)="([^"]*)"')
SKEW_WARN, SKEW_FAIL = 120.0, 300.0


def check_api(s: Session) -> bool:
    answer = s.send(Request("GET", "/v2/"), auth=False)
    s.challenge = answer.header("www-authenticate")
    if answer.status is None:
        s.report.add(
            "registry.api",
            FAIL,
            f"GET /v2/ got no answer: {answer.error}",
            "The front accepts TLS but does not answer HTTP: look at its log.",
        )
        return False
    version = answer.header(API_HEADER)
    if not version:
        s.report.add(
            "registry.api",
            FAIL,
            f"GET /v2/ answered {answer.status} without Docker-Distribution-Api-Version: not a registry",
            "The URL's port reaches something else (the UI's port? use the registry's, e.g. :5000), "
            "or the front answers for the registry (a maintenance page, an error page).",
            status=answer.status,
        )
        return False
    login = " (asks for a login)" if answer.status == 401 else ""
    s.report.add(
        "registry.api",
        OK,
        f"/v2/ answers as a registry ({version}, {answer.status}{login})",
        status=answer.status,
        server=s.server,
    )
    return True


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def check_challenge(s: Session) -> None:
    if not s.challenge:
        if s.report.checks[-1].data.get("status") == 401:
            s.report.add(
                "auth.challenge",
                FAIL,
                "/v2/ answered 401 without WWW-Authenticate",
                "Clients cannot log in: the front drops the registry's WWW-Authenticate header.",
            )
        else:
            s.report.add("auth.challenge", OK, "no login asked for (anonymous access to /v2/)")
        return
    scheme, params = _challenge(s.challenge)
    if scheme == "basic":
        s.report.add(
            "auth.challenge", OK, f"Basic login (realm {params.get('realm', '?')!r})", scheme="basic"
        )
        return
    if scheme != "bearer" or not params.get("realm"):
        s.report.add(
            "auth.challenge",
            FAIL,
            f"a challenge clients cannot answer: {s.challenge[:80]}",
            "The registry's auth must be Basic (htpasswd) or Bearer with a realm (a token server).",
        )
        return
    realm = params["realm"]
    if urlsplit(realm).scheme != "https":
        s.report.add(
            "auth.challenge",
            FAIL,
            f"the token realm {realm} is not https",
            "Clients would send the password in the clear: make the realm an https:// URL "
            "(REGISTRY_AUTH_TOKEN_REALM).",
            scheme="bearer",
            realm=realm,
        )
        return
    answer = _realm(s, realm, params, None)
    if answer.status is None:
        s.report.add(
            "auth.challenge",
            FAIL,
            f"the token realm {realm} does not answer: {answer.error}",
            "Clients fetch their token there: it must be reachable from them with a trusted "
            "certificate (REGISTRY_AUTH_TOKEN_REALM).",
            scheme="bearer",
            realm=realm,
        )
        return
    s.report.add(
        "auth.challenge",
        OK,
        f"Bearer login, token realm {realm} answers ({answer.status})",
        scheme="bearer",
        realm=realm,
    )


def _realm(s: Session, realm: str, params: dict[str, str], basic: str | None) -> Answer:
    """``GET realm?service=…&scope=…`` (push, pull and delete on the probe's repository)."""
    parts = urlsplit(realm)
    query = {"service": params.get("service", ""), "scope": f"repository:{s.repository}:pull,push,delete"}
    path = (parts.path or "/") + "?" + ((parts.query + "&") if parts.query else "") + urlencode(query)
    target = Target(parts.hostname or "", parts.port or 443)
    same = target.host == s.target.host and target.port == s.target.port
    if same:
        target = s.target
    context = (
        s.context if same else ssl.create_default_context(cafile=str(s.options.ca) if s.options.ca else None)
    )
    headers = {"Authorization": basic} if basic else {}
    return send(target, context, Request("GET", path, headers), s.options.timeout)


def check_login(s: Session) -> None:
    options = s.options
    needs = bool(s.challenge)
    if options.user is None:
        if needs:
            s.report.add(
                "auth.login",
                FAIL,
                "the registry asks for a login and none was given",
                "Run again with --user NAME (the password from the prompt or standard input).",
            )
        else:
            s.report.add("auth.login", INFO, "no --user: the checks run anonymously")
        return
    if not s.verified:
        s.report.add(
            "auth.login",
            INFO if not needs else FAIL,
            f"{options.user}: the password was not sent (the certificate failed its checks)",
            "Fix the certificate first; the password never crosses an unverified connection.",
        )
        return
    pair = f"{options.user}:{options.password or ''}".encode()
    basic = "Basic " + base64.b64encode(pair).decode()
    scheme, params = _challenge(s.challenge)
    if scheme == "bearer" and urlsplit(params.get("realm", "")).scheme != "https":
        s.report.add(
            "auth.login",
            FAIL,
            f"{options.user}: the password was not sent (the token realm is not an https:// URL)",
            "Fix the challenge first (see auth.challenge above).",
        )
        return
    if scheme == "bearer":
        _bearer(s, basic, params)
    else:
        _basic(s, basic, needs)


def _refused(s: Session, status: int | None, where: str, error: str | None) -> None:
    user = s.options.user
    if status == 429:
        s.report.add(
            "auth.login",
            FAIL,
            f"{user}: too many failed logins from this address ({where})",
            "Wait a minute, then try again with the right password.",
        )
    elif status in (401, 403):
        s.report.add(
            "auth.login",
            FAIL,
            f"the registry refused the login of {user} ({status} at {where})",
            "Wrong user or password (docker login fails the same way): check them, or set a new "
            "one in the htpasswd file (certproxy htpasswd NAME).",
        )
    else:
        s.report.add(
            "auth.login",
            FAIL,
            f"{user}: the login at {where} failed: {status or error}",
            "Look at the token server's or the front's log.",
        )


def _bearer(s: Session, basic: str, params: dict[str, str]) -> None:
    realm = params.get("realm", "")
    answer = _realm(s, realm, params, basic)
    if answer.status != 200:
        _refused(s, answer.status, realm, answer.error)
        return
    try:
        body = json.loads(answer.body)
        token = str(body.get("token") or body.get("access_token") or "")
    except (ValueError, AttributeError):
        token = ""
    if not token:
        s.report.add(
            "auth.login",
            FAIL,
            f"the token realm {realm} answered 200 without a token",
            "The token server's answer must be JSON with a token (distribution's token spec).",
        )
        return
    s.authorization = f"Bearer {token}"
    check = s.send(Request("GET", "/v2/"))
    if check.status != 200:
        s.authorization = None
        _refused(s, check.status, "/v2/ with the token", check.error)
        return
    s.report.add("auth.login", OK, f"{s.options.user} logged in (a token from {realm})")


def _basic(s: Session, basic: str, needs: bool) -> None:
    s.authorization = basic
    answer = s.send(Request("GET", "/v2/"))
    if answer.status != 200:
        s.authorization = None
        _refused(s, answer.status, "/v2/", answer.error)
        return
    said = "logged in" if needs else "sent (the registry asks for no login)"
    s.report.add("auth.login", OK, f"{s.options.user} {said}")


def check_clock(s: Session) -> None:
    try:
        remote = email.utils.parsedate_to_datetime(s.date).timestamp()
    except (TypeError, ValueError):
        s.report.add("clock", INFO, "clock: the registry sent no Date header to compare with")
        return
    skew = s.date_seen - remote
    ahead = "ahead of" if skew > 0 else "behind"
    said = f"this machine's clock is {abs(skew):.0f} s {ahead} the registry's"
    remedy = (
        "Tokens and certificates break with a skewed clock: sync both machines with NTP "
        "(timedatectl set-ntp true)."
    )
    if abs(skew) > SKEW_FAIL:
        s.report.add("clock", FAIL, said, remedy, skew_seconds=round(skew))
    elif abs(skew) > SKEW_WARN:
        s.report.add("clock", WARN, said, remedy, skew_seconds=round(skew))
    else:
        s.report.add(
            "clock", OK, f"clock within {max(abs(skew), 1):.0f} s of the registry's", skew_seconds=round(skew)
        )


def check_health(s: Session) -> None:
    """certproxy's short public ``/healthz`` on the TLS port, when it is the front."""
    answer = s.send(Request("GET", "/healthz"), auth=False, timeout=10)
    try:
        body = json.loads(answer.body) if answer.status else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("ok", "degraded", "failing"):
        s.report.add("certproxy", INFO, "not fronted by certproxy (no certproxy /healthz on this port)")
        return
    status, problems = str(body["status"]), [str(p) for p in body.get("problems") or []]
    renewals = [r for r in body.get("renewals") or [] if isinstance(r, dict)]
    said = "; ".join(_renewal(r) for r in renewals) or "no renewal state shown"
    if status == "failing" or any(r.get("last_error") for r in renewals):
        level = FAIL if status == "failing" else WARN
        s.report.add(
            "certproxy",
            level,
            f"certproxy says {status}: {'; '.join(problems) or said}",
            "`certproxy status` on the registry's host shows the last error and the next attempt.",
            status=status,
        )
    elif status == "degraded":
        s.report.add(
            "certproxy",
            WARN,
            f"certproxy says degraded: {'; '.join(problems)}",
            "`certproxy status` on the registry's host says more.",
            status=status,
        )
    else:
        s.report.add("certproxy", OK, f"fronted by certproxy, status ok; {said}", status=status)


def _renewal(r: dict[str, object]) -> str:
    text = f"renewal of {r.get('name')} due {r.get('next_renewal') or '-'}"
    if r.get("last_error"):
        text += f", failing: {r.get('last_error')} (next attempt {r.get('next_attempt') or '-'})"
    return text
