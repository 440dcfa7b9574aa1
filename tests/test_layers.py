"""The packages are layers: certs imports neither acme_client nor proxy."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "certproxy"
ORDER = ["certs", "acme_client", "proxy"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level >= 2 or mod.startswith("certproxy."):
                found.add(mod.removeprefix("certproxy.").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("certproxy."):
                    found.add(alias.name.split(".")[1])
    return found


def test_lower_layers_never_import_higher_ones() -> None:
    checked = 0
    for level, layer in enumerate(ORDER):
        folder = PKG / layer
        if not folder.exists():
            continue
        for path in folder.rglob("*.py"):
            checked += 1
            higher = _imports(path) & set(ORDER[level + 1:])
            assert not higher, f"{path.relative_to(PKG)} imports {higher}"
    assert checked >= 5
