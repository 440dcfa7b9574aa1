"""The name and the certificate, as a client of this machine sees them.

A first handshake takes the certificate without judging it (and offers ALPN ``h2``
and ``http/1.1`` to see which the front picks); then one handshake per trust a client
may use (the client's own: ``--ca`` or the system store; Docker's and podman's
``certs.d`` folders for this host and port) says whether that trust accepts it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from .report import FAIL, INFO, OK, WARN
from .session import Session, client_context
from .wire import Target, connect, connect_tcp, describe

EXPIRED, NOT_YET_VALID, HOSTNAME_MISMATCH = 10, 9, 62
WARN_DAYS = 14


def resolve(s: Session) -> bool:
    host, port = s.target.host, s.target.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        s.report.add(
            "dns",
            FAIL,
            f"{host} does not resolve: {exc.strerror}",
            f"Check the name's A/AAAA record (or /etc/hosts) as this machine's resolver sees it: "
            f"`getent hosts {host}`.",
        )
        return False
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    s.target = Target(host, port, addresses)
    if _is_address(host):
        s.report.add("dns", INFO, f"{host} is an address: no name to resolve", addresses=list(addresses))
    else:
        s.report.add("dns", OK, f"{host} resolves to {', '.join(addresses)}", addresses=list(addresses))
    return True


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _name(name: x509.Name) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        values = name.get_attributes_for_oid(oid)
        if values:
            return str(values[0].value)
    return name.rfc4514_string() or "(empty name)"


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [_name(cert.subject)]
    names: list[str] = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    return names + [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def _fetch(s: Session) -> x509.Certificate | None:
    """The first handshake: the certificate, the protocol; a check when it fails."""
    context = client_context(None, verify=False, alpn=("h2", "http/1.1"))
    try:
        with connect(s.target, context, 15) as sock:
            der = sock.getpeercert(binary_form=True)
            s.alpn, s.tls_version = sock.selected_alpn_protocol(), sock.version()
    except ssl.SSLError as exc:
        s.report.add(
            "tls.handshake",
            FAIL,
            f"no TLS handshake with {s.target.authority}: {describe(exc)}",
            "The port does not speak TLS (a plain-HTTP port?): give the registry's TLS port, e.g. :5000.",
        )
        return None
    except OSError as exc:
        s.report.add(
            "tls.handshake",
            FAIL,
            f"cannot connect to {s.target.authority}: {describe(exc)}",
            "Is the front running and the port open (firewall, cloud security group, the compose "
            "file's published ports)?",
        )
        return None
    s.reachable = True
    return x509.load_der_x509_certificate(der) if der else None


def _verify(s: Session, context: ssl.SSLContext) -> tuple[int, str] | None:
    """None when ``context`` accepts the certificate, else OpenSSL's code and message."""
    try:
        with connect(s.target, context, 15):
            return None
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_code, exc.verify_message or str(exc)
    except (OSError, ssl.SSLError) as exc:
        return 0, describe(exc)


def check_tls(s: Session) -> bool:
    """The certificate checks; False when the front cannot be reached at all."""
    cert = _fetch(s)
    if cert is None:
        return False
    now = dt.datetime.now(dt.UTC)
    issuer, names = _name(cert.issuer), _names(cert)
    days = (cert.not_valid_after_utc - now).total_seconds() / 86400
    error = _verify(s, client_context(s.options.ca))
    _chain(s, error, issuer, names, cert)
    _expiry(s, days, cert.not_valid_after_utc)
    s.verified = error is None
    if not s.verified:
        s.context = client_context(None, verify=False)  # the other checks still run, without the password
        s.report.add(
            "tls.unverified",
            INFO,
            "the checks below run without verifying the certificate "
            "(clients refuse it) and without sending a password",
        )
    expired = error is not None and error[0] in (EXPIRED, NOT_YET_VALID)
    if s.options.ca is not None:
        _system(s, expired)
    _certs_d(s, "docker", s.options.etc / "docker" / "certs.d", expired)
    _certs_d(s, "podman", s.options.etc / "containers" / "certs.d", expired)
    return True


def _trust(s: Session) -> str:
    return f"the CA in {s.options.ca}" if s.options.ca else "the system store"


def _chain(
    s: Session, error: tuple[int, str] | None, issuer: str, names: list[str], cert: x509.Certificate
) -> None:
    host, shown = s.target.host, ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    data: dict[str, object] = {
        "issuer": issuer,
        "names": names,
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    if error is None:
        s.report.add(
            "tls.chain",
            OK,
            f"certificate valid for {host}, issued by {issuer}, trusted by {_trust(s)}",
            **data,
        )
        return
    code, message = error
    if code == EXPIRED:
        when = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
        s.report.add(
            "tls.chain",
            FAIL,
            f"the certificate expired on {when} (issued by {issuer})",
            "Renew it. certproxy renews by itself: `certproxy status` and /healthz show the last "
            "error; another front: its ACME client (certbot renew) and a reload.",
            **data,
        )
    elif code == NOT_YET_VALID:
        s.report.add(
            "tls.chain",
            FAIL,
            f"the certificate is not valid yet (from {cert.not_valid_before_utc})",
            "This machine's clock or the issuer's is wrong: check both with NTP.",
            **data,
        )
    elif code == HOSTNAME_MISMATCH:
        s.report.add(
            "tls.chain",
            FAIL,
            f"the certificate is for {shown}, not for {host}",
            f"Serve a certificate that names {host} (certproxy: put it in CERTPROXY_DOMAINS), "
            "or reach the registry by a name the certificate holds.",
            **data,
        )
    else:
        s.report.add(
            "tls.chain",
            FAIL,
            f"the certificate (issued by {issuer}) is not trusted by {_trust(s)}: {message}",
            f"Give clients the CA that signed it: /etc/docker/certs.d/{s.target.authority}/ca.crt "
            "(docker), /etc/containers/certs.d/ (podman), the system store; here: --ca FILE. A "
            "self-signed certificate from certproxy means it has no CA certificate yet "
            "(certproxy status).",
            **data,
        )


def _expiry(s: Session, days: float, not_after: dt.datetime) -> None:
    when = not_after.strftime("%Y-%m-%d")
    if days < 0:
        s.report.add(
            "tls.expiry",
            FAIL,
            f"the certificate expired {-days:.0f} days ago ({when})",
            "Clients refuse it: renew it now.",
            days_left=round(days, 1),
        )
    elif days < WARN_DAYS:
        s.report.add(
            "tls.expiry",
            WARN,
            f"the certificate expires in {days:.1f} days ({when})",
            "Renewal should have happened by now: look at the renewer's log (certproxy status).",
            days_left=round(days, 1),
        )
    else:
        s.report.add("tls.expiry", OK, f"{days:.0f} days left (until {when})", days_left=round(days, 1))


def _system(s: Session, expired: bool) -> None:
    """With --ca: does the system store trust it too (clients without that CA)?"""
    if expired:
        s.report.add(
            "tls.system",
            INFO,
            "trusted by the system store: cannot tell while the certificate is outside its validity",
        )
        return
    context = client_context(None)
    context.check_hostname = False
    if _verify(s, context) is None:
        s.report.add("tls.system", OK, "trusted by the system store too")
    else:
        s.report.add(
            "tls.system",
            INFO,
            f"not trusted by the system store: clients need the CA you gave "
            f"with --ca (docker: /etc/docker/certs.d/{s.target.authority}/ca.crt)",
        )


def _folder(root: Path, target: Target) -> Path | None:
    """The certs.d folder for this host and port (for 443 also the bare host's)."""
    names = [target.authority] + ([f"{target.authority}:443"] if target.port == 443 else [])
    return next((root / n for n in names if (root / n).is_dir()), None)


def _certs_d(s: Session, client: str, root: Path, expired: bool) -> None:
    folder, key = _folder(root, s.target), f"tls.{client}"
    if folder is None:
        s.report.add(
            key, INFO, f"no {root}/{s.target.authority}/: {client} trusts the system store alone here"
        )
        return
    cas = sorted(folder.glob("*.crt"))
    if not cas:
        s.report.add(
            key,
            FAIL,
            f"{folder} holds no *.crt",
            f"Put the CA that signs the certificate into {folder}/ca.crt, or remove the empty folder.",
        )
        return
    if expired:
        s.report.add(
            key, INFO, f"{client} ({folder}): cannot tell while the certificate is outside its validity"
        )
        return
    context = client_context(None)  # docker and podman add certs.d to the system store
    context.check_hostname = False
    for ca in cas:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            s.report.add(
                key,
                FAIL,
                f"{ca} cannot be read as a CA: {describe(exc)}",
                "Replace it with the CA certificate in PEM.",
            )
            return
    if _verify(s, context) is None:
        s.report.add(key, OK, f"{client} trusts it ({folder})")
    else:
        s.report.add(
            key,
            FAIL,
            f"{client} refuses it: no CA in {folder} (or the system store) signs it",
            f"Put the CA that signs the certificate into {folder}/ca.crt; {client} reads it at "
            "the next pull or push.",
        )


def check_redirect(s: Session) -> None:
    """Plain HTTP on port 80: a redirect to HTTPS, or said that there is none (not a failure)."""
    host = s.target.authority.rsplit(":", 1)[0] if s.target.port != 443 else s.target.authority
    request = (
        f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certproxy-doctor\r\nConnection: close\r\n\r\n"
    )
    try:
        with connect_tcp(s.target, 5, port=80) as sock:
            sock.sendall(request.encode())
            head = sock.recv(4096).decode("latin-1")
    except OSError as exc:
        s.report.add(
            "http.redirect",
            INFO,
            f"nothing answers plain HTTP on port 80 ({describe(exc)})",
            "Not needed by registry clients; certproxy's HTTP-01 renewals need it when used.",
        )
        return
    lines = head.split("\r\n")
    status = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
    location = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("location:")), "")
    if status.startswith("3") and location.startswith("https://"):
        s.report.add(
            "http.redirect", OK, f"port 80 redirects to HTTPS ({status} to {location.split('?')[0]})"
        )
    else:
        s.report.add(
            "http.redirect",
            INFO,
            f"port 80 answers {status} without a redirect to HTTPS",
            "Not needed by registry clients (they use the TLS port); a browser typing the bare "
            "name lands there.",
        )


def check_protocol(s: Session) -> None:
    protocol = "HTTP/2" if s.alpn == "h2" else "HTTP/1.1"
    s.report.add(
        "http.protocol",
        OK,
        f"protocol {protocol} (ALPN {s.alpn or 'none'}, h2 and http/1.1 offered), {s.tls_version}",
        alpn=s.alpn,
        tls=s.tls_version,
    )
