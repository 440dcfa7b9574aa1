"""The README's first command, `make demo`, in its one-shot mode."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.procs import ROOT

pytestmark = pytest.mark.integration


def test_demo_oneshot_runs_the_compose_stack_with_acme_and_exits_0() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPROXY_")}
    env["DEMO_ONESHOT"] = "1"
    proc = subprocess.run([sys.executable, str(ROOT / "demo" / "demo.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "first certificate: serial" in out and "certproxy bootstrap" in out
    assert "ACME certificate served after" in out and "Pebble Intermediate" in out
    assert "digests match" in out
    assert '"status": "ok"' in out
    assert "localhost  live" in out
