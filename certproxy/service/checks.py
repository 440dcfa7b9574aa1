"""Start-up checks that touch the system, each ending in one line that names a setting.

Building a ``Config`` does no I/O; what can only be known by looking (a file
exists, a port can be bound) is checked here when a command starts, so a
mistake stops start-up with exit 2 instead of failing later and quietly.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..certs import os_problem

PRIVILEGED_HINT = (
    "ports below 1024 need root, CAP_NET_BIND_SERVICE, or the sysctl "
    "net.ipv4.ip_unprivileged_port_start=0 (the compose file sets it)"
)


class StartupError(Exception):
    """Start-up cannot go on; ``source`` names the setting at fault."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


def check_ca_bundle(path: Path | None) -> None:
    """The CA file for the ACME API exists and holds a PEM certificate (blocking)."""
    if path is None:
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StartupError("CERTPROXY_ACME_CA_BUNDLE", os_problem(exc, path)) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise StartupError("CERTPROXY_ACME_CA_BUNDLE", f"{path}: no PEM certificate in it")


def listen_error(exc: OSError, setting: str, bind: str, port: int) -> StartupError:
    """One line for a listener that cannot open, naming the setting the port came from."""
    where = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(
            "CERTPROXY_BIND", f"cannot listen on {where}: {bind} is not an address of this host"
        )
    if exc.errno == errno.EACCES and port < 1024:
        return StartupError(setting, f"cannot listen on {where}: {reason}; {PRIVILEGED_HINT}")
    if exc.errno == errno.EADDRINUSE:
        return StartupError(setting, f"cannot listen on {where}: port {port} is already in use")
    return StartupError(setting, f"cannot listen on {where}: {reason}")


def port_owner(port: int) -> str | None:
    """Which process listens on TCP ``port`` (``name (pid N)``), if this host lets us see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"{name} (pid {proc.name})"
        except OSError:
            continue
    return None


def raise_fd_limit(wanted: int, needed: int) -> str | None:
    """Raise the soft limit on open files towards ``wanted`` (at most the hard limit).

    Many hosts start services with a soft limit of 1024, below the default cap of
    4096 connections per listener: past it ``accept`` fails with EMFILE instead of
    the cap's clean 503. Returns a warning when the hard limit is below ``needed``.
    """
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return f"cannot raise the open-file limit from {soft} to {target}"
    if hard != resource.RLIM_INFINITY and hard < needed:
        return f"the open-file limit ({hard}) is below what one full listener needs ({needed})"
    return None


# glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20


def tune_malloc() -> bool:
    """Keep glibc's heap steady under bulk transfers; False where there is no glibc.

    A transfer moves pieces of up to 256 KiB (a read of TLS records, a join, a body
    chunk). With glibc's defaults, once many connections have come and gone, such a
    piece is mapped afresh each time and handed back when freed, and every one of its
    pages is faulted in: about 375 page faults per MiB uploaded were measured, 65 %
    more CPU per GB. Pieces below 4 MiB now come from the heap, and the heap is given
    back to the system only past 32 MiB free at its top.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
