"""The packages are layers, lower never imports higher:
certs -> acme_client -> proxy -> service -> cli. Inside the data plane the
upstream side knows the exchange only through ``ResponseSink``. The store's
paths stay inside ``certs/``: the others name things by key."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "certproxy"
ORDER = ["certs", "acme_client", "proxy", "service", "cli"]


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Every ``certproxy`` module a file imports, as ``package`` or ``package.module``
    (relative imports resolved), including those under ``TYPE_CHECKING``; ``source``
    stands in for the file's text."""
    package = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    tree = ast.parse(path.read_text() if source is None else source)
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


def _store_paths_used(path: Path, source: str | None = None) -> list[str]:
    """How a module reaches the store's paths: the ``certs.paths`` module, ``StorePaths``,
    or a ``.paths`` / ``._paths`` attribute (``FileStore``'s)."""
    text = path.read_text() if source is None else source
    used = sorted(m for m in _imports(path, text)
                  if m == "certs.paths" or m.startswith("certs.paths.") or m == "certs.StorePaths")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Attribute) and node.attr in ("paths", "_paths"):
            used.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "StorePaths":
            used.append(f"line {node.lineno}: StorePaths")
    return used


def test_the_stores_paths_are_used_only_inside_certs() -> None:
    """Outside ``certs/`` the store is reached by key (a name, a directory, a token),
    never through its paths (``FileStore`` keeps them in ``_paths``)."""
    checked = 0
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] == "certs":
            continue
        checked += 1
        used = _store_paths_used(path)
        assert not used, f"{path.relative_to(PKG)} uses the store's paths: {used}"
    assert checked >= 30
    # The checker itself, on a module of a higher layer that does each of these.
    probe = PKG / "cli" / "_paths_probe.py"
    source = ("from ..certs.paths import StorePaths\nfrom ..certs import StorePaths as P\n"
              "import certproxy.certs.paths\nx = store.paths.live\ny = store._paths\nz = StorePaths(root)\n")
    used = _store_paths_used(probe, source)
    assert set(used) == {"certs.paths", "certs.paths.StorePaths", "certs.StorePaths", "line 4: .paths",
                         "line 5: ._paths", "line 6: StorePaths"}, used


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


def test_serving_without_a_policy_or_a_registry_route_loads_neither() -> None:
    """The access policy's modules and the registry API's reader are loaded only where a
    setting asks for them (about 1 MiB resident for a process that never uses them)."""
    import subprocess
    import sys

    probe = (
        "import sys, certproxy.cli.serve, certproxy.acme_client.child\n"
        "from certproxy.service.config import Config, parse_routes\n"
        "from certproxy.service.server import Front\n"
        "front = Front(Config(routes=parse_routes('443=http://ui:80', 'test')))\n"
        "assert front.observer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('certproxy.service.access', "
        "'certproxy.service.registry'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    watched = probe.replace("443=http://ui:80", "5000=http://registry:5000").replace(
        "assert front.observer is None", "assert front.observer is not None")
    result = subprocess.run([sys.executable, "-c", watched], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "certproxy.service.registry" in result.stdout, result.stdout + result.stderr


MAX_FUNCTION_LINES = 60
# Functions allowed past the bound, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}


def test_no_function_is_longer_than_sixty_lines() -> None:
    """A function that needs more than 60 lines (docstring included) holds a second idea."""
    long = {}
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                name = f"{path.relative_to(PKG)}:{node.name}"
                if size > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = size
    assert not long, long
