"""Parsing the ``Host`` header of a client request.

Used by the plain-HTTP listener to build redirects, and by the proxy to check
every request's Host (``valid_host``, on the fast path) and to build the
public origin. Anything that is not ``name[:port]`` or ``[v6]:port`` is
refused, so a redirect can never be steered to an odd URL.
"""

from __future__ import annotations

import ipaddress
import re

_REG_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})?")
# What parse_host accepts, as one bytes match (IPv6 literals are checked further).
_HOST_B = re.compile(rb"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})?|(\[[0-9A-Fa-f:.]+\]))(?::([0-9]{1,5}))?")


def valid_host(value: bytes) -> bool:
    """``parse_host(value) is not None``, without decoding (one regex match per request)."""
    m = _HOST_B.fullmatch(value)
    if m is None or len(value) > 300 or b".." in value:
        return False
    literal, port = m.groups()
    if port is not None and not 1 <= int(port) <= 65535:
        return False
    return literal is None or parse_host(value.decode("ascii")) is not None


def parse_host(value: str | None) -> tuple[str, int | None] | None:
    """``(hostname, port or None)`` for a valid Host header, else None."""
    if not value or len(value) > 300:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        host = f"[{host}]"
    else:
        host, sep, port_text = value.partition(":")
        rest = f":{port_text}" if sep else ""
        if not _REG_NAME.fullmatch(host) or ".." in host:
            return None
    if not rest:
        return host.lower(), None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        return None
    port = int(rest[1:])
    if not 1 <= port <= 65535:
        return None
    return host.lower(), port


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:443``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def origin(scheme: str, hostname: str, port: int | None) -> str:
    default = 443 if scheme == "https" else 80
    if port is None or port == default:
        return f"{scheme}://{hostname}"
    return f"{scheme}://{hostname}:{port}"


class HostCheck:
    """``valid_host`` with a memory: clients send the same few Host values again and
    again, so a listener asks the regex once per value (at most ``size`` kept)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._seen: dict[bytes, bool] = {}

    def __call__(self, value: bytes) -> bool:
        known = self._seen.get(value)
        if known is None:
            known = valid_host(value)
            if len(self._seen) >= self.size:
                self._seen.clear()
            self._seen[value] = known
        return known
