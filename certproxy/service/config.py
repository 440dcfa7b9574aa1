"""certproxy's configuration: one frozen, validated ``Config``.

Every setting has one name in three places: a ``--flag``, an environment
variable ``CERTPROXY_<NAME>`` and a key ``<name>`` of the TOML file given by
``--config``. Flags win over the environment, which wins over the file, which
wins over the defaults. A value that does not parse raises ``ConfigError``
naming where it came from, so ``certproxy serve`` can stop with one line.

Building a ``Config`` does no I/O besides reading the TOML file; whether the
store is usable is checked when the server starts.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..acme_client.settings import (
    CHALLENGES,
    KEY_TYPES,
    LOCAL_CA_DIRECTORY,
    TSIG_ALGORITHMS,
    AcmeSettings,
    DnsSettings,
    SettingsError,
)
from ..certs import canonical_ip
from ..certs.pair import is_ip
from ..proxy.routes import Limits, Route
from ..proxy.upstream import PoolSettings

ENV_PREFIX = "CERTPROXY_"
CONFIG_VAR = "CERTPROXY_CONFIG"  # the TOML file, when --config is not given
# 1: the pure-Python data plane where the compiled one is installed (read by
# certproxy/__init__.py when certproxy is imported; see certproxy/build.py)
PURE_VAR = "CERTPROXY_PURE"
# Variables of certproxy's that are no setting of serve's (certproxy doctor's certs.d root,
# the pure-Python data plane)
OTHER_VARS = frozenset({CONFIG_VAR, "CERTPROXY_DOCTOR_CERTS_D", PURE_VAR})
LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DEFAULT_ROUTES = "443=http://registry-ui:80,5000=http://registry:5000"

_EMAIL_RE = re.compile(r"[^@\s,;<>]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_DOMAIN_RE = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class ConfigError(Exception):
    """A setting that cannot be used. ``source`` names the variable, flag or key."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


@dataclass(frozen=True)
class Config:
    store: Path = Path("/var/lib/certproxy")
    domains: tuple[str, ...] = ()
    email: str | None = None
    staging: bool = False
    acme_directory: str | None = None
    acme_ca_bundle: Path | None = None
    acme: bool | None = None  # None: on when domains are set
    acme_eab_kid: str | None = None
    acme_eab_hmac_key: str | None = field(default=None, repr=False)
    acme_key_type: str = "ec256"
    acme_profile: str | None = None
    acme_retry_min: float = 60.0
    bind: str = "0.0.0.0"
    http_port: int | None = 80  # None: no plain-HTTP listener
    routes: tuple[Route, ...] = field(default_factory=lambda: parse_routes(DEFAULT_ROUTES, "default"))
    upstream_connect_timeout: float = 10.0
    # distribution's own proxy recipe: the final PUT of a large layer can be silent for minutes
    upstream_read_timeout: float = 900.0
    upstream_keepalive: float = 30.0
    keepalive_timeout: float = 75.0
    header_timeout: float = 30.0  # first byte of a request head to its end (slowloris)
    tls_handshake_timeout: float = 10.0
    max_connections: int = 4096  # per listener; past it, new connections get a 503 and close
    shutdown_grace: float = 30.0
    reload_poll: float = 30.0
    log_format: str = "text"
    log_level: str = "info"
    admin_port: int | None = None  # /metrics and /healthz; off when unset
    admin_bind: str = "127.0.0.1"
    auth_htpasswd: Path | None = None
    auth_ports: tuple[int, ...] | None = None  # None: 443 when it is routed
    hsts_max_age: int = 31536000  # 0: no Strict-Transport-Security header
    workers: int = 1  # processes serving the same ports (SO_REUSEPORT); "auto": one per CPU
    challenge: str = "http-01"  # how the ACME CA checks the names: http-01, dns-01 or tls-alpn-01
    dns_server: tuple[str, int] | None = None  # dns-01: the RFC 2136 primary (host, port)
    dns_tsig_key: str | None = None
    dns_tsig_secret: str | None = field(default=None, repr=False)  # never shown
    dns_tsig_algorithm: str = "hmac-sha256"
    dns_zone: str | None = None  # found from the server's SOA when unset
    dns_provider: str | None = None  # a dns-lexicon provider instead of RFC 2136
    local_ca: bool = False  # certificates from a CA of certproxy's own in STORE/ca, not ACME
    share_ports: bool = False  # replicas on one host network share the ports (SO_REUSEPORT)
    admin_socket: Path | None = None  # /healthz and /metrics of this process on a unix socket
    access: Path | None = None  # the registry routes' access policy (TOML); off when unset
    access_ports: tuple[int, ...] | None = None  # None: 5000 when it is routed
    registry_ports: tuple[int, ...] | None = None  # None: the access ports, else 5000 when routed
    metrics_repositories: tuple[str, ...] | int = 50  # names and patterns, or the busiest N
    metrics_upload_window: float = 3600.0  # an upload silent this long counts as abandoned

    def __post_init__(self) -> None:
        if not self.routes:
            raise ConfigError("CERTPROXY_ROUTES", "at least one route is needed")
        ports = [r.port for r in self.routes]
        try:
            self.acme_settings()  # its own checks, named after the setting at fault
        except SettingsError as exc:
            own = exc.field in ("domains", "email", "challenge") or exc.field.startswith("dns_")
            setting = exc.field if own else f"acme_{exc.field}"
            raise ConfigError(env_name(setting), exc.message) from None
        for setting, chosen in (
            ("CERTPROXY_AUTH_PORTS", self.auth_ports),
            ("CERTPROXY_ACCESS_PORTS", self.access_ports),
            ("CERTPROXY_REGISTRY_PORTS", self.registry_ports),
        ):
            unknown = [p for p in chosen or () if p not in ports]
            if unknown:
                routed = ", ".join(str(p) for p in ports)
                raise ConfigError(setting, f"port {unknown[0]} is not a TLS route (routed: {routed})")
        if self.access is not None and not self.gated_ports:
            routed = ", ".join(str(p) for p in ports)
            raise ConfigError(
                "CERTPROXY_ACCESS_PORTS",
                f"the access policy would guard no port: name the registry's (routed: {routed})",
            )
        both = set(self.gated_ports) & set(self.protected_ports) if self.auth_htpasswd else set()
        if both:
            raise ConfigError(
                "CERTPROXY_ACCESS_PORTS",
                f"port {min(both)} is also behind CERTPROXY_AUTH_HTPASSWD's basic auth: "
                "a port has one of them (set CERTPROXY_AUTH_PORTS)",
            )

        if self.admin_port is not None and (self.admin_port in ports or self.admin_port == self.http_port):
            raise ConfigError(
                "CERTPROXY_ADMIN_PORT", f"port {self.admin_port} is already in use by a listener"
            )
        if self.local_ca and self.acme:
            raise ConfigError(
                "CERTPROXY_LOCAL_CA",
                "certificates come from the local CA or from ACME, not both: "
                "set CERTPROXY_ACME=off or CERTPROXY_LOCAL_CA=0",
            )
        if self.http_port is not None and self.http_port in ports:
            raise ConfigError("CERTPROXY_HTTP_PORT", f"port {self.http_port} is also a TLS route")

    @property
    def gated_ports(self) -> tuple[int, ...]:
        """The TLS ports behind the access policy (none without ``access``)."""
        if self.access is None:
            return ()
        if self.access_ports is not None:
            return self.access_ports
        return (5000,) if any(r.port == 5000 for r in self.routes) else ()

    @property
    def watched_ports(self) -> tuple[int, ...]:
        """The TLS ports whose requests are read as the registry API (access lines, metrics)."""
        if self.registry_ports is not None:
            return self.registry_ports
        return self.gated_ports or ((5000,) if any(r.port == 5000 for r in self.routes) else ())

    @property
    def protected_ports(self) -> tuple[int, ...]:
        """The TLS ports behind certproxy's basic auth (when an htpasswd file is set)."""
        if self.auth_ports is not None:
            return self.auth_ports
        return (443,) if any(r.port == 443 for r in self.routes) else ()

    @property
    def cert_domains(self) -> tuple[str, ...]:
        """The names the certificate is for; ``localhost`` when none are configured."""
        return self.domains or ("localhost",)

    @property
    def acme_enabled(self) -> bool:
        if self.local_ca:
            return False
        return bool(self.domains) if self.acme is None else self.acme

    @property
    def maintains_certificates(self) -> bool:
        """Whether certproxy obtains and renews its certificate (ACME or the local CA)."""
        return self.acme_enabled or self.local_ca

    @property
    def directory_url(self) -> str:
        if self.acme_directory:
            return self.acme_directory
        return LETSENCRYPT_STAGING if self.staging else LETSENCRYPT_PRODUCTION

    def acme_settings(self) -> AcmeSettings:
        return AcmeSettings(
            directory=LOCAL_CA_DIRECTORY if self.local_ca else self.directory_url,
            domains=self.cert_domains,
            email=self.email,
            ca_bundle=self.acme_ca_bundle,
            eab_kid=self.acme_eab_kid,
            eab_hmac_key=self.acme_eab_hmac_key,
            key_type=self.acme_key_type,
            profile=self.acme_profile,
            retry_min=self.acme_retry_min,
            challenge=self.challenge,
            dns=self._dns_settings(),
            address_challenge=self._address_challenge(),
        )

    def _address_challenge(self) -> str | None:
        """With dns-01, how an IP address is proven (dns-01 cannot, RFC 8738): http-01 on
        the plain-HTTP listener, else tls-alpn-01 on the TLS route of port 443, where the
        CA connects; None: neither listener, and start-up stops."""
        if self.challenge != "dns-01" or not any(is_ip(d) for d in self.cert_domains):
            return None
        if self.http_port:
            return "http-01"
        return "tls-alpn-01" if any(r.port == 443 for r in self.routes) else None

    @property
    def alpn_ports(self) -> tuple[int, ...]:
        """The TLS ports whose listeners answer tls-alpn-01 validations: every one with that
        challenge, the route of 443 when dns-01 lends it the addresses, else none."""
        if not self.acme_enabled:
            return ()
        if self.challenge == "tls-alpn-01":
            return tuple(r.port for r in self.routes)
        return (443,) if self._address_challenge() == "tls-alpn-01" else ()

    def _dns_settings(self) -> DnsSettings | None:
        if self.dns_server is None and self.dns_provider is None:
            return None
        return DnsSettings(
            server=self.dns_server[0] if self.dns_server else None,
            port=self.dns_server[1] if self.dns_server else 53,
            provider=self.dns_provider,
            tsig_key=self.dns_tsig_key,
            tsig_secret=self.dns_tsig_secret,
            tsig_algorithm=self.dns_tsig_algorithm,
            zone=self.dns_zone,
        )

    def limits(self) -> Limits:
        """What every client connection of a listener is held to."""
        return Limits(
            max_connections=self.max_connections,
            header_timeout=self.header_timeout,
            keepalive_timeout=self.keepalive_timeout,
            # A client silent mid-upload is held to the same bound as a silent upstream.
            body_timeout=self.upstream_read_timeout,
            handshake_timeout=self.tls_handshake_timeout,
        )

    def pool_settings(self) -> PoolSettings:
        return PoolSettings(
            connect_timeout=self.upstream_connect_timeout,
            read_timeout=self.upstream_read_timeout,
            keepalive=self.upstream_keepalive,
        )

    @property
    def redirect_port(self) -> int:
        """The TLS port plain-HTTP requests are sent to: 443 if routed, else the lowest."""
        ports = sorted(r.port for r in self.routes)
        return 443 if 443 in ports else ports[0]


# -- parsers: (raw value, source) -> typed value; raise ConfigError ----------


def _text(raw: Any, source: str) -> str:
    if not isinstance(raw, str):
        raise ConfigError(source, f"expected a string, got {raw!r}")
    return raw.strip()


def parse_port(raw: Any, source: str, *, allow_off: bool = False) -> int | None:
    text = str(raw).strip().lower()
    if allow_off and text in ("off", "none", "0", ""):
        return None
    try:
        port = int(text, 10)
    except ValueError:
        raise ConfigError(source, f"{raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(source, f"port {port} is out of range 1-65535")
    return port


def _port(raw: Any, source: str) -> int:
    port = parse_port(raw, source)
    if port is None:  # pragma: no cover - only with allow_off
        raise ConfigError(source, "a port is needed")
    return port


def parse_bool(raw: Any, source: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(source, f"{raw!r} is not a boolean (use 1 or 0)")


def parse_switch(raw: Any, source: str) -> bool | None:
    text = str(raw).strip().lower()
    if text in ("auto", ""):
        return None
    return parse_bool(raw, source)


def parse_seconds(raw: Any, source: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(source, f"{raw!r} is not a number of seconds") from None
    if not 0 < value <= 86400 * 7:
        raise ConfigError(source, f"{value} seconds is out of range")
    return value


def parse_count(raw: Any, source: str) -> int:
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise ConfigError(source, f"{raw!r} is not a count from 1 to 1000000")
    return int(text)


MAX_WORKERS = 64


_REPOSITORY_PATTERN = re.compile(r"[a-z0-9*]+([._/-]+[a-z0-9*]+)*|\*")


def parse_repositories(raw: Any, source: str) -> tuple[str, ...] | int:
    """The repositories with metric series of their own: a number (the busiest N, 0 for
    none), or a comma list (or TOML list) of names and ``*`` patterns."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    entries = raw if isinstance(raw, list) else str(raw).split(",")
    names = tuple(str(e).strip() for e in entries if str(e).strip())
    if len(names) == 1 and names[0].isdigit():
        if int(names[0]) > 10_000:
            raise ConfigError(source, f"{names[0]} repositories is more than 10000 series")
        return int(names[0])
    if not names:
        raise ConfigError(source, "name repositories (comma list, * patterns) or give a number")
    for name in names:
        if not _REPOSITORY_PATTERN.fullmatch(name):
            raise ConfigError(source, f"{name!r} is not a repository name or * pattern")
    return names


def parse_workers(raw: Any, source: str) -> int:
    text = str(raw).strip().lower()
    if text == "auto":  # the CPUs this process may run on
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(MAX_WORKERS, cpus)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ConfigError(source, f"{raw!r} is not a number of workers from 1 to {MAX_WORKERS} (or auto)")
    return int(text)


def parse_hsts(raw: Any, source: str) -> int:
    text = str(raw).strip().lower()
    if text in ("off", "0", ""):
        return 0
    if not text.isdigit() or int(text) > 2**31:
        raise ConfigError(source, f"{raw!r} is not a max-age in seconds (or off)")
    return int(text)


def _unusable_address(name: str) -> str | None:
    """Why an IP address cannot stand in a certificate a client would match, or None."""
    if not is_ip(name):
        return None
    address = ipaddress.ip_address(name)
    if address.is_unspecified or address.is_multicast:
        return "an unspecified or multicast address is no server's address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"an IPv4-mapped address: name {address.ipv4_mapped} instead"
    return None


def parse_domains(raw: Any, source: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    domains: list[str] = []
    for item in items:
        name = str(item).strip().lower().rstrip(".")
        if not name:
            continue
        if "%" in name and is_ip(name.strip("[]")):
            raise ConfigError(source, f"{item!r}: a scoped address cannot be in a certificate")
        name = canonical_ip(name) or name  # ::1, as certificates and certbot write it
        if not is_ip(name) and (len(name) > 253 or not _DOMAIN_RE.fullmatch(name)):
            raise ConfigError(source, f"{item!r} is not a domain name or an IP address")
        if not is_ip(name) and name.rpartition(".")[2].isdigit():  # 010.0.0.1, 256.1.1.1
            raise ConfigError(
                source, f"{item!r} is neither a domain name (all digits at the end) nor an IP address"
            )
        unusable = _unusable_address(name)
        if unusable:
            raise ConfigError(source, f"{item!r}: {unusable}")
        if name not in domains:
            domains.append(name)
    return tuple(domains)


def parse_url(raw: Any, source: str) -> str:
    text = _text(raw, source)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(source, f"{text!r} needs an http:// or https:// scheme and a host")
    return text


def parse_routes(raw: Any, source: str) -> tuple[Route, ...]:
    if isinstance(raw, dict):
        items = [f"{k}={v}" for k, v in raw.items()]
    else:
        items = [i for i in str(raw).split(",") if i.strip()]
    routes: list[Route] = []
    for item in items:
        port_text, sep, url = item.strip().partition("=")
        if not sep:
            raise ConfigError(source, f"{item.strip()!r} is not PORT=URL")
        routes.append(_route(_port(port_text, source), url.strip(), source))
    seen: set[int] = set()
    for r in routes:
        if r.port in seen:
            raise ConfigError(source, f"port {r.port} is routed twice")
        seen.add(r.port)
    return tuple(routes)


def _route(port: int, url: str, source: str) -> Route:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(source, f"upstream {url!r} needs an http:// or https:// scheme")
    if not parts.hostname:
        raise ConfigError(source, f"upstream {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(source, f"upstream {url!r} must be scheme://host[:port] only")
    try:
        upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(source, f"upstream {url!r} has a bad port") from None
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    return Route(
        port=port,
        url=f"{parts.scheme}://{netloc}:{upstream_port}",
        scheme=parts.scheme,
        host=host,
        upstream_port=upstream_port,
    )


def parse_bind(raw: Any, source: str) -> str:
    text = _text(raw, source)
    if not is_ip(text):
        raise ConfigError(source, f"{text!r} is not an IP address")
    return text


def parse_choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(raw: Any, source: str) -> str:
        text = str(raw).strip().lower()
        if text not in choices:
            raise ConfigError(source, f"{raw!r} is not one of {', '.join(choices)}")
        return text

    return parse


def parse_hostport(raw: Any, source: str, default_port: int) -> tuple[str, int] | None:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; None when empty."""
    text = _text(raw, source)
    if not text:
        return None
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(source, f"{text!r} is not host[:port]")
            port = _port(rest[1:], source)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, source)
    if not host or not (is_ip(host) or _DOMAIN_RE.fullmatch(host.lower())):
        raise ConfigError(source, f"{text!r} is not host[:port]")
    return host, port


def _path(raw: Any, source: str) -> Path:
    text = _text(raw, source)
    if not text:
        raise ConfigError(source, "empty path")
    return Path(text)


def parse_email(raw: Any, source: str) -> str | None:
    text = _text(raw, source)
    if text and not _EMAIL_RE.fullmatch(text):
        raise ConfigError(source, f"{text!r} is not an e-mail address")
    return text or None


def _ports(raw: Any, source: str) -> tuple[int, ...]:
    """A comma list (or a TOML list) of ports."""
    return tuple(
        _port(p, source) for p in (raw if isinstance(raw, list) else str(raw).split(",")) if str(p).strip()
    )


def _optional_text(raw: Any, source: str) -> str | None:
    return _text(raw, source) or None


def _optional_path(raw: Any, source: str) -> Path | None:
    return _path(raw, source) if str(raw).strip() else None


def _optional_url(raw: Any, source: str) -> str | None:
    return parse_url(raw, source) if str(raw).strip() else None


# Setting name -> parser. The name is the dataclass field, the TOML key, and
# (upper-cased, prefixed) the environment variable.
SETTINGS: dict[str, Callable[[Any, str], Any]] = {
    "store": _path,
    "domains": parse_domains,
    "email": parse_email,
    "staging": parse_bool,
    "acme_directory": _optional_url,
    "acme_ca_bundle": _optional_path,
    "acme": parse_switch,
    "acme_eab_kid": _optional_text,
    "acme_eab_hmac_key": _optional_text,
    "acme_key_type": parse_choice(*KEY_TYPES),
    "acme_profile": _optional_text,
    "acme_retry_min": parse_seconds,
    "bind": parse_bind,
    "http_port": lambda raw, src: parse_port(raw, src, allow_off=True),
    "routes": parse_routes,
    "upstream_connect_timeout": parse_seconds,
    "upstream_read_timeout": parse_seconds,
    "upstream_keepalive": parse_seconds,
    "keepalive_timeout": parse_seconds,
    "header_timeout": parse_seconds,
    "tls_handshake_timeout": parse_seconds,
    "max_connections": lambda raw, src: parse_count(raw, src),
    "shutdown_grace": parse_seconds,
    "reload_poll": parse_seconds,
    "log_format": parse_choice("text", "json"),
    "log_level": parse_choice("debug", "info", "warning", "error"),
    "admin_port": lambda raw, src: parse_port(raw, src, allow_off=True),
    "admin_bind": parse_bind,
    "auth_htpasswd": _optional_path,
    "hsts_max_age": lambda raw, src: parse_hsts(raw, src),
    "workers": parse_workers,
    "challenge": parse_choice(*CHALLENGES),
    "dns_server": lambda raw, src: parse_hostport(raw, src, 53),
    "dns_tsig_key": _optional_text,
    "dns_tsig_secret": _optional_text,
    "dns_tsig_algorithm": parse_choice(*TSIG_ALGORITHMS),
    "dns_zone": _optional_text,
    "dns_provider": _optional_text,
    "local_ca": parse_bool,
    "share_ports": parse_bool,
    "admin_socket": _optional_path,
    "auth_ports": lambda raw, src: _ports(raw, src),
    "access": _optional_path,
    "access_ports": lambda raw, src: _ports(raw, src),
    "registry_ports": lambda raw, src: _ports(raw, src),
    "metrics_repositories": parse_repositories,
    "metrics_upload_window": parse_seconds,
}


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def read_config_file(path: Path, source: str | None = None) -> dict[str, Any]:
    source = source or f"--config {path}"
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise ConfigError(source, f"unknown key {unknown[0]!r}{_did_you_mean(unknown[0], list(SETTINGS))}")
    return data


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``CERTPROXY_*`` variables that name no setting (a typo is not silently ignored)."""
    known = {env_name(k) for k in SETTINGS} | OTHER_VARS
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def load_config(
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> Config:
    """Merge defaults < file < environment < flags into a validated Config.

    The file is ``--config``, else ``CERTPROXY_CONFIG``: set in a container's
    environment, it reaches every command run there (``certproxy healthcheck``
    and ``status`` included), not only the one given the flag."""
    unknown = unknown_variables(environ)
    if unknown:
        hint = _did_you_mean(unknown[0], [env_name(k) for k in SETTINGS] + [CONFIG_VAR, PURE_VAR])
        raise ConfigError(unknown[0], f"unknown setting{hint}")
    values: dict[str, Any] = {}
    layers: list[tuple[Mapping[str, Any], Callable[[str], str]]] = []
    source = None
    if config_file is None and environ.get(CONFIG_VAR):
        config_file = Path(environ[CONFIG_VAR])
        source = f"{CONFIG_VAR} {config_file}"
    if config_file is not None:
        data = read_config_file(config_file, source)
        if isinstance(data.get("access"), str) and data["access"].strip():
            # The settings file's access policy is relative to the settings file.
            data["access"] = str(config_file.parent / data["access"].strip())
        layers.append((data, lambda k: f"{config_file}: {k}"))
    layers.append(({k: environ[env_name(k)] for k in SETTINGS if env_name(k) in environ}, env_name))
    layers.append(({k: v for k, v in (flags or {}).items() if v is not None}, flag_name))
    for layer, source_of in layers:
        for key, raw in layer.items():
            values[key] = SETTINGS[key](raw, source_of(key))
    return Config(**values)
