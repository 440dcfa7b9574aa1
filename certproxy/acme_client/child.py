"""The ACME client in a process of its own, for ``certproxy serve``.

How this works: ``ChildIssuer`` is the manager's ``Issuer``; each of its calls
runs ``python -m certproxy.acme_client.child``, sends it one JSON request on
standard input (the settings, secrets included, never on the command line),
and reads JSON lines back: progress and log lines as they happen, then the
result or the error. The serving process never imports ``acme``, ``josepy``,
``requests`` or ``dnspython`` (about 9 MiB resident, kept for good once
imported), and a client that misbehaves cannot take the data plane with it.
A round trip costs one interpreter start (about 0.3 s of CPU) a few times a
day. The child watches its standard input: when the server goes away, the
pipe closes and the child exits instead of finishing an order nobody waits
for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..certs import FileStore, StoreError
from .errors import AcmeError
from .settings import AcmeSettings, DnsSettings

log = logging.getLogger("certproxy.acme")

DIRECTORY_TTL = 12 * 3600.0  # seconds a directory's features are taken as known


def _settings_json(settings: AcmeSettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["ca_bundle"] = str(settings.ca_bundle) if settings.ca_bundle else None
    return data


def _settings_from(data: dict[str, Any]) -> AcmeSettings:
    data = dict(data)
    data["domains"] = tuple(data["domains"])
    data["ca_bundle"] = Path(data["ca_bundle"]) if data["ca_bundle"] else None
    data["dns"] = DnsSettings(**data["dns"]) if data["dns"] else None
    return AcmeSettings(**data)


class ChildIssuer:
    """``AcmeIssuer``'s calls, each in a child process."""

    def __init__(self, store: FileStore, settings: AcmeSettings) -> None:
        self.store = store
        self.settings = settings
        self.account_uri: str | None = None
        self._ari: tuple[float, bool] | None = None

    def issue(
        self,
        domains: tuple[str, ...],
        *,
        replaces: str | None = None,
        progress: Callable[[str], None] = log.info,
    ) -> tuple[bytes, bytes]:
        result = self._call("issue", {"domains": list(domains), "replaces": replaces}, progress)
        self.account_uri = result.get("account_uri")
        return result["chain"].encode(), result["key"].encode()

    def offers_ari(self) -> bool:
        if self._ari is not None and time.monotonic() - self._ari[0] < DIRECTORY_TTL:
            return self._ari[1]
        offers = bool(self._call("offers_ari", {}, log.info)["offers"])
        self._ari = (time.monotonic(), offers)
        return offers

    def renewal_info(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        result = self._call("renewal_info", {"cert": cert_pem.decode()}, log.info)
        when = dt.datetime.fromisoformat(result["when"]) if result["when"] else None
        return when, dt.datetime.fromisoformat(result["next_poll"])

    def _call(self, op: str, args: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
        request = {
            "op": op,
            "args": args,
            "store": str(self.store.root),
            "settings": _settings_json(self.settings),
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "certproxy.acme_client.child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            raise AcmeError(f"cannot start the ACME client process: {exc}") from None
        assert proc.stdin is not None and proc.stdout is not None
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()  # left open: the child exits if it closes (this process died)
            for line in proc.stdout:
                message = json.loads(line)
                if "progress" in message:
                    progress(message["progress"])
                elif "log" in message:
                    level, name, text = message["log"]
                    logging.getLogger(name).log(level, "%s", text)
                elif "result" in message:
                    result = message["result"]
                elif "error" in message:
                    error = message["error"]
        finally:
            proc.stdin.close()
            code = proc.wait()
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            proc.stdout.close()
        if error is not None:
            if error.get("kind") == "store":
                raise StoreError(error["message"])
            retry_after = error.get("retry_after")
            raise AcmeError(
                error["message"],
                problem_type=error.get("problem_type"),
                retry_after=dt.datetime.fromisoformat(retry_after) if retry_after else None,
                permanent=bool(error.get("permanent")),
            )
        if result is None:
            tail = stderr.strip().splitlines()[-1:] or ["no output"]
            raise AcmeError(f"the ACME client process ended with code {code}: {tail[0]}")
        return result


# -- the child ----------------------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Forward(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit({"log": [record.levelno, record.name, record.getMessage()]})


def _watch_parent() -> None:
    """The parent keeps our standard input open while it waits; end with it."""
    sys.stdin.read()
    os._exit(3)


def _run(request: dict[str, Any]) -> dict[str, Any]:
    from .client import AcmeIssuer

    def progress(text: str) -> None:
        _emit({"progress": text})

    def notable(text: str) -> None:  # a look at the directory: only what changed is said
        if not text.startswith("account: reusing"):
            progress(text)

    issuer = AcmeIssuer(
        FileStore(Path(request["store"])), _settings_from(request["settings"]), progress=notable
    )
    op, args = request["op"], request["args"]
    if op == "issue":
        chain, key = issuer.issue(tuple(args["domains"]), replaces=args["replaces"], progress=progress)
        return {"chain": chain.decode(), "key": key.decode(), "account_uri": issuer.account_uri}
    if op == "offers_ari":
        return {"offers": issuer.offers_ari()}
    if op == "renewal_info":
        when, next_poll = issuer.renewal_info(args["cert"].encode())
        return {"when": when.isoformat() if when else None, "next_poll": next_poll.isoformat()}
    raise ValueError(f"unknown operation {op!r}")


def main() -> None:
    request = json.loads(sys.stdin.readline())
    threading.Thread(target=_watch_parent, daemon=True).start()
    root = logging.getLogger("certproxy")
    root.handlers[:] = [_Forward()]
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        _emit({"result": _run(request)})
    except AcmeError as exc:
        retry_after = exc.retry_after.isoformat() if exc.retry_after else None
        error = {"message": str(exc), "problem_type": exc.problem_type, "permanent": exc.permanent}
        _emit({"error": {**error, "retry_after": retry_after}})
    except StoreError as exc:
        _emit({"error": {"kind": "store", "message": str(exc)}})
    except Exception as exc:  # one line for the parent's log, whatever it was
        _emit({"error": {"message": f"the ACME client failed: {type(exc).__name__}: {exc}"}})
    sys.stdout.flush()
    os._exit(0)  # the watcher thread still blocks on standard input


if __name__ == "__main__":
    main()
