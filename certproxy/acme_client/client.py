"""The one adapter around the synchronous ``acme`` library.

Everything here blocks (``requests`` under the hood): callers on the event
loop use ``asyncio.to_thread``. ``AcmeIssuer`` keeps one account per ACME
directory (its key in ``STORE/accounts/<directory>/``, mode 0600, created
once and reused), and runs the RFC 8555 order flow: new order, proof of
each name by the solver of the configured challenge (``solvers.py``: HTTP-01
and TLS-ALPN-01 answers in the store, where any process sharing it answers
the CA; DNS-01 TXT records), finalization; the answers are removed
afterwards, whatever the outcome. Errors leave this module only as
``AcmeError``.

Two things ``acme`` lacks are added here: the ``replaces`` field of a new
order (RFC 9773, section 5), which makes a renewal exempt from Let's
Encrypt's rate limits, and the response headers of a failed request (so a
``Retry-After`` on ``rateLimited`` is honoured).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from acme import client as acme_client
from acme import crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.json_util import field as jose_field
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from .. import __version__
from ..certs import FileStore, canonical_ip
from ..certs.keys import new_private_key
from .errors import AcmeError, translate
from .settings import AcmeSettings
from .solvers import Solver, solver_for

log = logging.getLogger("certproxy.acme")

Progress = Callable[[str], None]
ORDER_DEADLINE = dt.timedelta(seconds=120)


class NewOrderReplacing(messages.NewOrder):
    """``newOrder`` with RFC 9773's ``replaces`` (the ARI id of the certificate renewed)."""

    replaces: str | None = jose_field("replaces", omitempty=True)


class _Network(acme_client.ClientNetwork):
    """ClientNetwork that remembers the headers of the last response (Retry-After)
    and retries a rejected nonce several times (acme retries once; CAs may reject
    any nonce, Pebble 5 % of them by design)."""

    last_headers: Any = None
    BAD_NONCE_RETRIES = 5

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(self.BAD_NONCE_RETRIES):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
                log.debug("the CA rejected a nonce; retrying with a fresh one")
        return self._post_once(*args, **kwargs)

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_headers = response.headers
        return response


SHORTLIVED = "shortlived"  # Let's Encrypt's profile, the one that issues for IP addresses


def make_csr(key_pem: bytes, domains: tuple[str, ...]) -> bytes:
    """A CSR naming every DNS name as a dNSName and every IP address as an iPAddress."""
    names = [d for d in domains if canonical_ip(d) is None]
    ips = [ipaddress.ip_address(ip) for ip in (canonical_ip(d) for d in domains) if ip]
    return crypto_util.make_csr(key_pem, names or None, ipaddrs=ips or None)


def choose_profile(
    configured: str | None, offered: dict[str, Any], addresses: tuple[str, ...]
) -> tuple[str | None, str]:
    """The profile to order (None: the CA's default) and why, as the log says it."""
    if configured:
        if configured in offered:
            return configured, "CERTPROXY_ACME_PROFILE"
        listed = ", ".join(offered) or "none"
        return None, f"the CA does not offer CERTPROXY_ACME_PROFILE={configured} (it offers: {listed})"
    if addresses and SHORTLIVED in offered:
        return SHORTLIVED, f"the order names the IP address {addresses[0]}"
    if addresses and offered:
        return None, f"the order names an IP address, but the CA offers no {SHORTLIVED} profile"
    if addresses:
        return None, "the CA offers no profiles"
    return None, "the CA's default"


POLL_FIRST = 0.2  # seconds before the first poll of an authorization or an order
POLL_MAX = 2.0  # ... growing by half each time up to this, or what the CA's Retry-After says


def _account_lost(error: messages.Error) -> bool:
    """The CA answers as if the account never existed (a reset CA, a deleted account)."""
    if error.code == "accountDoesNotExist":
        return True
    return error.code == "unauthorized" and "account" in (error.detail or "").lower()


def _pause(delay: float, retry_after: str | None, deadline: float) -> float:
    """Sleep ``delay`` seconds, or the CA's Retry-After if longer, within ``deadline``
    (a ``time.monotonic()`` value); returns the next delay."""
    wait = delay
    if retry_after and retry_after.strip().isdigit():
        wait = max(wait, float(retry_after))
    if time.monotonic() + wait > deadline:
        raise acme_errors.TimeoutError()
    time.sleep(wait)
    return min(delay * 1.5, POLL_MAX)


def _poll_authorizations(
    client: acme_client.ClientV2, orderr: messages.OrderResource, deadline: float
) -> messages.OrderResource:
    """Wait until no authorization is ``pending``: the first look after 0.2 s, then
    growing (acme's own loop waits a whole second every time)."""
    done = []
    for authzr in orderr.authorizations:
        delay, retry_after = POLL_FIRST, None
        while authzr.body.status == messages.STATUS_PENDING:
            delay = _pause(delay, retry_after, deadline)
            authzr, response = client.poll(authzr)
            retry_after = response.headers.get("Retry-After")
        done.append(authzr)
    failed = [a for a in done if a.body.status != messages.STATUS_VALID]
    if failed:
        raise acme_errors.ValidationError(failed)
    updated: messages.OrderResource = orderr.update(authorizations=done)
    return updated


def _finalize(
    client: acme_client.ClientV2, orderr: messages.OrderResource, deadline: float
) -> messages.OrderResource:
    """Send the CSR and poll the order until the certificate can be fetched (same pace)."""
    try:
        orderr = client.begin_finalization(orderr)
    except messages.Error as error:
        if error.code != "orderNotReady":
            raise
    body = orderr.body
    delay, retry_after = POLL_FIRST, None
    while body.status != messages.STATUS_VALID or body.certificate is None:
        if body.status == messages.STATUS_INVALID:
            if body.error is not None:
                raise acme_errors.IssuanceError(body.error)
            raise acme_errors.Error("the order failed and the CA said nothing more")
        if body.status == messages.STATUS_READY:
            client.begin_finalization(orderr)
        delay = _pause(delay, retry_after, deadline)
        response = client._post_as_get(orderr.uri)  # noqa: SLF001 (see tests/test_private_apis.py)
        retry_after = response.headers.get("Retry-After")
        body = messages.Order.from_json(response.json())
    certificate = client._post_as_get(body.certificate)  # noqa: SLF001
    final: messages.OrderResource = orderr.update(body=body, fullchain_pem=certificate.text)
    return final


class AcmeIssuer:
    """Issues certificates from one ACME directory (the ``Issuer`` of the manager)."""

    def __init__(self, store: FileStore, settings: AcmeSettings, progress: Progress = log.info) -> None:
        self.store = store
        self.settings = settings
        self.progress = progress
        self._net: _Network | None = None
        self._client: acme_client.ClientV2 | None = None
        self.account_uri: str | None = None

    # -- account ---------------------------------------------------------
    def _account_key(self, progress: Progress) -> JWKEC:
        directory = self.settings.directory
        pem = self.store.account_key(directory)
        if pem is None:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            path = self.store.write_account_key(directory, pem)
            progress(f"account: new ECDSA P-256 key in {path}")
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise AcmeError(
                f"account: the key of {directory} in the store is not an ECDSA key", permanent=True
            )
        return JWKEC(key=loaded)

    def connect(self, progress: Progress | None = None) -> acme_client.ClientV2:
        """Directory, account key, registration: once per issuer object."""
        if self._client is not None:
            return self._client
        progress = progress or self.progress
        try:
            key = self._account_key(progress)
            verify: bool | str = str(self.settings.ca_bundle) if self.settings.ca_bundle else True
            net = _Network(
                key,
                alg=ES256,
                # requests takes a CA file as well as a bool; acme annotates it as bool only
                verify_ssl=verify,  # type: ignore[arg-type]
                user_agent=f"certproxy/{__version__}",
                timeout=round(self.settings.network_timeout),
            )
            self._net = net
            directory = acme_client.ClientV2.get_directory(self.settings.directory, net)
            client = acme_client.ClientV2(directory, net)
            self._register(client, net, key, progress)
        except Exception as exc:  # translated at the boundary
            raise self._translate(exc, "account") from None
        self._client = client
        return client

    def _register(self, client: acme_client.ClientV2, net: _Network, key: JWKEC, progress: Progress) -> None:
        s = self.settings
        eab = None
        if s.eab_kid and s.eab_hmac_key:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(),
                kid=s.eab_kid,
                hmac_key=s.eab_hmac_key,
                directory=client.directory,
            )
        reg = messages.NewRegistration.from_data(
            email=s.email, terms_of_service_agreed=True, external_account_binding=eab
        )
        try:
            regr = client.new_account(reg)
            progress(f"account: registered {regr.uri}")
        except acme_errors.ConflictError as conflict:
            regr = messages.RegistrationResource(uri=conflict.location, body=messages.Registration())
            net.account = regr
            regr = client.query_registration(regr)
            progress(f"account: reusing {regr.uri}")
        self.account_uri = regr.uri
        self.store.write_account(
            s.directory, {"uri": regr.uri, "directory": s.directory, "contact": list(regr.body.contact)}
        )

    # -- directory facts -------------------------------------------------
    def offers_ari(self) -> bool:
        client = self.connect()
        return "renewalInfo" in client.directory.to_partial_json()

    def renewal_info(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        """(a moment in the CA's renewal window or None without ARI, when to ask again)."""
        client = self.connect()
        try:
            when, next_poll = client.renewal_time(cert_pem)
        except acme_errors.ARIError as exc:
            log.warning("renewal info: %s", exc)
            return None, exc.retry_after.astimezone(dt.UTC)
        except Exception as exc:
            raise self._translate(exc, "renewal info") from None
        if next_poll.tzinfo is None:  # acme returns a naive local time here
            next_poll = next_poll.astimezone(dt.UTC)
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when, next_poll

    # -- the order -------------------------------------------------------
    def issue(
        self, domains: tuple[str, ...], *, replaces: str | None = None, progress: Progress | None = None
    ) -> tuple[bytes, bytes]:
        """One order for all ``domains``; returns (fullchain PEM, private key PEM)."""
        progress = progress or self.progress
        client = self.connect(progress)
        key_pem = new_private_key(self.settings.key_type)
        csr_pem = make_csr(key_pem, domains)
        solvers: dict[str, Solver] = {}
        stage = "order"
        try:
            client, orderr = self._order(client, csr_pem, domains, replaces, progress)
            stage = "challenge"
            self._prove(client, orderr, solvers, progress)
            stage = "finalize"
            deadline = time.monotonic() + ORDER_DEADLINE.total_seconds()
            orderr = _poll_authorizations(client, orderr, deadline)
            orderr = _finalize(client, orderr, deadline)
            progress("finalize: certificate issued")
        except Exception as exc:
            raise self._translate(exc, stage) from None
        finally:
            for solver in solvers.values():
                solver.clean_up()
        chain = (
            orderr.fullchain_pem.encode() if isinstance(orderr.fullchain_pem, str) else orderr.fullchain_pem
        )
        return chain, key_pem

    def _order(
        self,
        client: acme_client.ClientV2,
        csr_pem: bytes,
        domains: tuple[str, ...],
        replaces: str | None,
        progress: Progress,
    ) -> tuple[acme_client.ClientV2, messages.OrderResource]:
        """``newOrder``; a CA that no longer knows the account gets a new one, once per
        order (never a loop). Returns the client the order was placed with."""
        try:
            orderr = self._new_order(client, csr_pem, replaces, progress)
        except messages.Error as error:
            if not _account_lost(error):
                raise
            client = self._register_again(progress, error)
            orderr = self._new_order(client, csr_pem, replaces, progress)
        progress(
            f"order: {orderr.uri} for {', '.join(domains)}" + (f" (replaces {replaces})" if replaces else "")
        )
        return client, orderr

    def _prove(
        self,
        client: acme_client.ClientV2,
        orderr: messages.OrderResource,
        solvers: dict[str, Solver],
        progress: Progress,
    ) -> None:
        """For every identifier not yet valid, the solver of its challenge (an IP address
        never takes dns-01) presents the answer; once all are visible, the CA is told to
        validate them. ``solvers`` collects the solvers made, for the clean-up."""
        answers = []
        for authzr in orderr.authorizations:
            ident = authzr.body.identifier.value
            if authzr.body.wildcard:
                ident = "*." + ident
            if authzr.body.status == messages.STATUS_VALID:
                progress(f"challenge {ident}: already valid")
                continue
            kind = self.settings.challenge_for(ident)
            if kind not in solvers:
                solvers[kind] = solver_for(self.settings, self.store, progress, kind)
            solver = solvers[kind]
            challb = next((c for c in authzr.body.challenges if isinstance(c.chall, solver.challenge)), None)
            if challb is None:
                raise AcmeError(f"challenge {ident}: the CA offers no {kind} challenge", permanent=True)
            response, validation = challb.response_and_validation(client.net.key)
            solver.present(ident, challb.chall, validation)
            answers.append((ident, challb, response, kind))
        for solver in solvers.values():
            solver.wait_visible()
        for ident, challb, response, kind in answers:
            client.answer_challenge(challb, response)
            progress(f"challenge {ident}: {kind} answered")

    def _register_again(self, progress: Progress, error: messages.Error) -> acme_client.ClientV2:
        """The CA no longer knows the account (its state was reset): keep the old key aside,
        register a new account with a new key, and go on."""
        aside = self.store.retire_account_key(self.settings.directory, dt.datetime.now(dt.UTC))
        log.warning(
            "account %s: the CA answered %s; the old key is kept as %s, registering a new account",
            self.account_uri,
            error.code,
            aside,
        )
        progress(f"account: the CA no longer knows {self.account_uri}; registering a new one")
        self._client = None
        self.account_uri = None
        return self.connect(progress)

    def _new_order(
        self,
        client: acme_client.ClientV2,
        csr_pem: bytes,
        replaces: str | None,
        progress: Progress | None = None,
    ) -> messages.OrderResource:
        offered = getattr(client.directory.meta, "profiles", None) or {}
        profile, why = choose_profile(self.settings.profile, offered, self.settings.addresses)
        if self.settings.profile and profile is None:
            log.warning("%s; ordering without a profile", why)
        elif offered or self.settings.addresses:
            (progress or self.progress)(f"order: profile {profile or 'none'} ({why})")
        if not replaces:
            return client.new_order(csr_pem, profile=profile)
        # acme's new_order cannot send "replaces": same request, one more field.
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, ips = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
        identifiers += [messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(i)) for i in ips]
        order = NewOrderReplacing(identifiers=identifiers, profile=profile or None, replaces=replaces)
        response = client._post(client.directory["newOrder"], order)  # noqa: SLF001
        body = messages.Order.from_json(response.json())
        authorizations = [
            client._authzr_from_response(client._post_as_get(url), uri=url)  # noqa: SLF001
            for url in body.authorizations
        ]
        return messages.OrderResource(
            body=body, uri=response.headers.get("Location"), authorizations=authorizations, csr_pem=csr_pem
        )

    def _translate(self, exc: BaseException, stage: str) -> AcmeError:
        headers = self._net.last_headers if self._net is not None else None
        return translate(exc, stage=stage, headers=headers)
