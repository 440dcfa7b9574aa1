"""The two builds of the data plane: compiled (mypyc, setup.py) and pure Python.

``make test`` sets ``CPT_EXPECT_BUILD`` to the build it made, so a run that
meant to test the compiled modules cannot pass on the pure ones (or the reverse).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from certproxy import build

ROOT = Path(__file__).resolve().parents[1]
PROXY = ROOT / "certproxy" / "proxy"


def test_the_build_under_test_is_the_one_make_test_asked_for() -> None:
    expected = os.environ.get("CPT_EXPECT_BUILD")
    if expected is None:
        pytest.skip("CPT_EXPECT_BUILD is set by make test")
    assert build.describe() == expected


def test_setup_compiles_the_modules_build_names() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMPILED" for t in node.targets)
    )
    paths = [ast.literal_eval(e) for e in listed.elts]  # type: ignore[attr-defined]
    assert paths == [f"certproxy/proxy/{name}.py" for name in build.HOT]


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An extension module built before its source changed would run the old code."""
    for name in build.HOT:
        for so in PROXY.glob(f"{name}.*.so"):
            assert so.stat().st_mtime >= (PROXY / f"{name}.py").stat().st_mtime, (
                f"{so.name} is older than {name}.py: run make deps"
            )


def test_certproxy_pure_imports_every_hot_module_from_its_source() -> None:
    code = (
        "import importlib, certproxy.build as b\n"
        "for n in b.HOT:\n"
        "    m = importlib.import_module('certproxy.proxy.' + n)\n"
        "    print(m.__file__)\n"
        "print(b.describe())\n"
    )
    env = {**os.environ, "CERTPROXY_PURE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    assert lines[-1] == "pure"
    assert all(line.endswith(".py") for line in lines[:-1]), lines
