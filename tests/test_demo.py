"""The README's first command, `make demo`, in its one-shot mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.procs import ROOT, free_port

pytestmark = pytest.mark.integration


def test_demo_oneshot_pushes_pulls_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_ONESHOT": "1", "DEMO_HTTP_PORT": str(free_port()),
           "DEMO_UI_PORT": str(free_port()), "DEMO_REGISTRY_PORT": str(free_port())}
    env = {k: v for k, v in env.items() if not k.startswith("CERTPROXY_")}
    proc = subprocess.run([sys.executable, str(ROOT / "demo" / "demo.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "digests match" in proc.stdout
    assert '"status": "degraded"' in proc.stdout  # bootstrap certificate, reported as such
    assert "localhost  bootstrap" in proc.stdout
