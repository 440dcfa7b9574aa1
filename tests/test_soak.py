"""The bounded soak (bench/soak.py) in its 60-second CI version: mixed traffic
with certificate swaps, zero unexpected errors, flat memory and descriptors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from soak import soak, verdict  # noqa: E402

pytestmark = pytest.mark.integration


async def test_sixty_second_soak(tmp_path: Path, measure: Callable[[str, str], None]) -> None:
    result = await soak(60, 10, tmp_path)
    measure("soak 60 s: requests ok / errors / pushes verified / swaps",
            f"{result['requests_ok']} / {result['errors']} / {result['pushes_verified']} / {result['swaps']}")
    measure("soak 60 s: RSS MiB start / end, fds start / end",
            f"{result['rss_mib_start']} / {result['rss_mib_end']}, {result['fds_start']} / {result['fds_end']}")
    assert verdict(result) == []
    assert result["requests_ok"] > 1000 and result["pushes_verified"] > 10 and result["swaps"] >= 4
