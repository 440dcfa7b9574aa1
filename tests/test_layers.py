"""The packages are layers, lower never imports higher:
certs -> acme_client -> proxy -> service -> cli. Inside the data plane the
upstream side knows the exchange only through ``ResponseSink``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "certproxy"
ORDER = ["certs", "acme_client", "proxy", "service", "cli"]


def _imports(path: Path) -> set[str]:
    """Every ``certproxy`` module a file imports, as ``package`` or ``package.module``
    (relative imports resolved), including those under ``TYPE_CHECKING``."""
    package = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - (node.level - 1)])
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names]  # a name may be a module
            for full in [mod, *names]:
                if full.startswith("certproxy."):
                    found.add(full.removeprefix("certproxy."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("certproxy."):
                    found.add(alias.name.removeprefix("certproxy."))
    return found


def test_lower_layers_never_import_higher_ones() -> None:
    checked = 0
    for level, layer in enumerate(ORDER):
        folder = PKG / layer
        assert folder.is_dir(), f"layer {layer} is missing"
        for path in folder.rglob("*.py"):
            checked += 1
            higher = {m.split(".")[0] for m in _imports(path)} & set(ORDER[level + 1:])
            assert not higher, f"{path.relative_to(PKG)} imports {higher}"
    assert checked >= 30


def test_the_data_plane_imports_only_the_store_below_it() -> None:
    for path in (PKG / "proxy").rglob("*.py"):
        layers = {m.split(".")[0] for m in _imports(path)}
        assert layers <= {"proxy", "certs"}, f"{path.relative_to(PKG)} imports {layers}"


def test_the_upstream_side_knows_neither_the_exchange_nor_the_client() -> None:
    imported = _imports(PKG / "proxy" / "upstream.py")
    assert not imported & {"proxy.exchange", "proxy.client"}, imported
    # and the exchange does not reach into the client's module at run time
    assert "proxy.client" not in {m for m in _imports(PKG / "proxy" / "routes.py")}


def test_no_import_circle_inside_the_data_plane() -> None:
    """Type-checking imports included: each module of proxy/ sees the ones it uses
    through their interfaces, never both ways (client -> exchange -> upstream, routes)."""
    modules = {p.stem: p for p in (PKG / "proxy").glob("*.py") if p.stem != "__init__"}
    graph = {name: {m.split(".")[1] for m in _imports(path) if m.startswith("proxy.") and m.count(".") >= 1}
             & set(modules) for name, path in modules.items()}
    assert {"client", "exchange", "upstream", "routes", "flow", "phases", "messages"} <= set(graph)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    circles = sorted(name for name in graph if reaches(name, name, set()))
    assert not circles, {name: sorted(graph[name]) for name in circles}


def test_the_resolver_sees_relative_imports() -> None:
    """The checker itself: a relative import of a higher layer is found."""
    probe = PKG / "certs" / "_layer_probe.py"
    probe.write_text("from ..proxy import wire\nfrom ..service.config import Config\n")
    try:
        found = _imports(probe)
    finally:
        probe.unlink()
    assert {"proxy.wire", "service.config"} <= found


def test_importing_certproxy_changes_nothing_in_the_process() -> None:
    """No exit handler of certproxy's and no warning filter is installed by importing any
    of its modules: set-up happens when the program runs (setup_logging, a watcher's start)."""
    import subprocess
    import sys

    modules = sorted(".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in PKG.rglob("*.py") if p.stem != "__main__")  # __main__ runs the program
    probe = (
        "import atexit, importlib, sys, warnings\n"
        "registered = []\n"
        "atexit.register = lambda f, *a, **k: registered.append(f)\n"
        "before = list(warnings.filters)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "mine = [f.__module__ for f in registered if (f.__module__ or '').startswith('certproxy')]\n"
        "# filters on a library's own warning classes are that library's (urllib3, requests)\n"
        "added = [f for f in warnings.filters if f not in before\n"
        "         and f[2].__module__.split('.')[0] in ('builtins', 'certproxy')]\n"
        "print(len(sys.modules), mine, added)\n"
        "sys.exit(1 if mine or added else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(modules) >= 50
