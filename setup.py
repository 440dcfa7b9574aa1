"""The optional compiled build of the data plane's hot modules (docs/0003-compiled-hot-path.md).

``CERTPROXY_COMPILE=1`` compiles the modules named in ``COMPILED`` with mypyc (it needs
mypy, a C compiler and Python's headers at build time); without it, or with ``0``, the
build is pure Python. The ``.py`` files stay the one source: each compiled module is built
from them, and an install without the extension modules runs the same code interpreted.
``make deps`` builds the compiled modules in place (next to their sources);
``CERTPROXY_PURE=1`` at run time makes ``certproxy`` import the pure modules even where the
compiled ones are present (``certproxy/__init__.py``).
"""

from __future__ import annotations

import os

from setuptools import setup

# The data plane's modules that run per connection and per request. ``phases`` stays
# interpreted: its error class derives from RuntimeError, which mypyc cannot compile.
COMPILED = [
    "certproxy/proxy/accessline.py",
    "certproxy/proxy/client.py",
    "certproxy/proxy/exchange.py",
    "certproxy/proxy/flow.py",
    "certproxy/proxy/headers.py",
    "certproxy/proxy/hello.py",
    "certproxy/proxy/hostname.py",
    "certproxy/proxy/messages.py",
    "certproxy/proxy/routes.py",
    "certproxy/proxy/tls.py",
    "certproxy/proxy/tlsconn.py",
    "certproxy/proxy/upstream.py",
    "certproxy/proxy/wire.py",
]


def extensions() -> list[object]:
    choice = os.environ.get("CERTPROXY_COMPILE", "0")
    if choice not in ("0", "1"):
        raise SystemExit(f"CERTPROXY_COMPILE is 0 or 1, not {choice!r}")
    if choice == "0":
        return []
    from mypyc.build import mypycify

    # One shared library for the group (certproxy/proxy/_native__mypyc.*.so, inside the
    # package, so an editable install finds it too): calls between the modules are native.
    return list(mypycify(COMPILED, opt_level="3", group_name="certproxy.proxy._native"))


setup(ext_modules=extensions())
