"""Which build of the data plane runs: compiled (mypyc) or pure Python.

The hot modules of ``certproxy.proxy`` may be present twice: as ``.py`` sources and
as extension modules compiled from them (``setup.py``, ``CERTPROXY_COMPILE=1``).
Python imports an extension module before a source of the same name, so the compiled
build runs wherever it was built. ``CERTPROXY_PURE=1`` in the environment makes
``certproxy`` import the sources instead (``certproxy/__init__.py`` calls
``prefer_sources`` before anything of the data plane is imported): the same
install can run, and the tests can check, both builds.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The modules setup.py compiles (kept in step by tests/test_build.py).
HOT = (
    "accessline",
    "client",
    "exchange",
    "flow",
    "headers",
    "hello",
    "hostname",
    "messages",
    "routes",
    "tls",
    "tlsconn",
    "upstream",
    "wire",
)


class SourcesFirst(importlib.machinery.PathFinder):
    """Finds ``certproxy``'s modules from their ``.py`` files even where an extension
    module of the same name sits beside them."""

    @classmethod
    def find_spec(
        cls,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("certproxy."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.origin is None:
            return spec
        if not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        source = Path(spec.origin).with_name(fullname.rpartition(".")[2] + ".py")
        if not source.is_file():
            return spec
        return importlib.util.spec_from_file_location(fullname, source)


def prefer_sources() -> None:
    """Import ``certproxy``'s modules from their sources from now on."""
    if not any(finder is SourcesFirst for finder in sys.meta_path):
        sys.meta_path.insert(0, SourcesFirst)


def compiled() -> bool:
    """Whether the data plane's hot modules run compiled (imports them)."""
    from .proxy import exchange

    return not (exchange.__file__ or "").endswith(".py")


def describe() -> str:
    """One word for logs and ``--version``: ``compiled`` or ``pure``."""
    return "compiled" if compiled() else "pure"
