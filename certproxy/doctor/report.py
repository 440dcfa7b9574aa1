"""The doctor's findings: one ``Check`` per thing looked at, in the order looked at.

A check is ``ok`` (✓), ``fail`` (✗: the path does not work, or will break), ``warn``
(!: works today, look at it) or ``info`` (–: a fact, or a check that could not run).
Only ``fail`` makes the exit status 1. Nothing secret goes into a check: no password,
no token, no upload state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

OK, FAIL, WARN, INFO = "ok", "fail", "warn", "info"
SYMBOLS = {OK: "✓", FAIL: "✗", WARN: "!", INFO: "–"}


@dataclass
class Check:
    id: str  # stable, for scripts: "tls.chain", "push.cap", ...
    status: str
    summary: str  # what was found, one line
    remedy: str = ""  # what to do about it, one or two lines; empty when nothing
    data: dict[str, object] = field(default_factory=dict)


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    on_check: Callable[[Check], None] | None = None

    def add(self, id: str, status: str, summary: str, remedy: str = "", /, **data: object) -> Check:
        check = Check(id, status, summary, remedy, data)
        self.checks.append(check)
        if self.on_check is not None:
            self.on_check(check)
        return check

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def get(self, id: str) -> Check | None:
        return next((c for c in self.checks if c.id == id), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "ok": self.ok,
                "seconds": round(time.monotonic() - self.started, 2),
                "checks": [asdict(c) for c in self.checks],
            },
            indent=2,
        )


def render(check: Check) -> str:
    """A check as the terminal shows it: the symbol, the summary, the remedy indented."""
    lines = [f"{SYMBOLS[check.status]} {check.summary}"]
    lines += [f"    {line}" for line in check.remedy.splitlines() if line]
    return "\n".join(lines)


def mib(size: float) -> str:
    """A size for people: bytes, KiB, MiB or GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size:.0f} bytes"
