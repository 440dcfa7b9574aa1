"""``certproxy status``: the certificates in the store, and what a running certproxy serves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ..certs import FileStore, PairError, StoreError, name_for_domain, os_problem, utcnow
from .common import EXIT_CONFIG, EXIT_OK, config_from
from .health_client import default_url, get_health, health_url

if TYPE_CHECKING:
    from ..service.config import Config


def _report(url: str) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]], dict[str, Any] | None]:
    """(what a running certproxy serves, its renewals, which process of a set answered)
    from its /healthz; (None, [], None) when none answers."""
    answer = get_health(url)
    if not answer.is_certproxy or answer.body is None:
        return None, [], None
    certs, renewals = answer.body.get("certificates"), answer.body.get("renewals")
    worker = answer.body.get("worker")
    return (
        (certs if isinstance(certs, list) else None),
        (renewals if isinstance(renewals, list) else []),
        (worker if isinstance(worker, dict) else None),
    )


def _print_renewals(renewals: list[dict[str, Any]]) -> None:
    """Each name's renewal as the running certproxy sees it; errors whole, never cut."""
    for r in renewals:
        print(f"renewal of {r.get('name')}: due {r.get('next_renewal') or '-'} ({r.get('reason') or '-'})")
        print(
            f"  last attempt {r.get('last_attempt') or '-'}, last success {r.get('last_success') or '-'}, "
            f"consecutive failures {r.get('failures', 0)}"
        )
        if r.get("last_error"):
            print(f"  last error: {r.get('last_error')}")
        if r.get("blocked"):
            print("  retries blocked: not retrying until the configuration changes")
        elif r.get("next_attempt"):
            print(f"  next attempt {r.get('next_attempt')}")


def _not_a_store(store: FileStore) -> str | None:
    """Why ``store`` is not a certproxy store (a mistyped ``--store``), or None."""
    root = store.root
    if not root.exists():
        return f"{root}: no such folder (certproxy serve creates the store)"
    if not root.is_dir():
        return f"{root}: not a folder"
    if not store.has_layout():
        return f"{root}: not a certproxy store (no live/ or bootstrap/ in it)"
    return None


def _rows(store: FileStore) -> list[dict[str, object]]:
    now = utcnow()
    rows: list[dict[str, object]] = []
    for kind, names, loader in (
        ("live", store.live_names(), store.load_live),
        ("bootstrap", store.bootstrap_names(), store.load_bootstrap),
    ):
        for name in names:
            try:
                rows.append(loader(name, now).summary(now))
            except PairError as exc:
                rows.append({"name": name, "kind": kind, "error": f"{exc.path}: {exc.reason}"})
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from(args, ("store",))
    url = health_url(args.url) if args.url else default_url(config)
    served, renewals, worker = _report(url)
    store = FileStore(config.store)
    try:
        problem = _not_a_store(store)
        rows = [] if problem else _rows(store)
    except OSError as exc:  # a folder certproxy may not enter
        problem = os_problem(exc, config.store)
    if problem:
        print(f"certproxy status: CERTPROXY_STORE: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    trust = _local_ca(store, config)
    # The running server knows which certificate is its primary; the shell may not.
    primary = str(served[0].get("name")) if served else name_for_domain(config.cert_domains[0])
    if args.json:
        print(
            json.dumps(
                {
                    "store": str(config.store),
                    "primary": primary,
                    "certificates": rows,
                    "served": served,
                    "renewals": renewals,
                    "worker": worker,
                    "local_ca": trust,
                },
                indent=2,
            )
        )
        return EXIT_OK
    _print_served(url if worker is None else f"{url}, instance {worker.get('instance')}", served)
    print(f"store {config.store}  (primary name: {primary})")
    if trust is not None:
        for line in trust.get("recipe") or [trust.get("error")]:
            print(f"  {line}")
    if rows:
        _print_table(rows)
    else:
        print("no certificates")
    _print_renewals(renewals)
    return EXIT_OK


def _print_table(rows: list[dict[str, object]]) -> None:
    """The store's certificates, one row each, in aligned columns."""
    header = ("NAME", "KIND", "EXPIRES", "LEFT", "ISSUER", "SERIAL", "DOMAINS")
    table = [header]
    for r in rows:
        if "error" in r:
            table.append((str(r["name"]), str(r["kind"]), "-", "-", "INVALID", "-", str(r["error"])))
        else:
            domains = r["domains"]
            table.append(
                (
                    str(r["name"]),
                    str(r["kind"]),
                    str(r["not_after"])[:19],
                    time_left(float(str(r["days_left"]))),
                    str(r["issuer"]),
                    str(r["serial"])[:16],
                    ",".join(domains) if isinstance(domains, list) else str(domains),
                )
            )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def time_left(days: float) -> str:
    """What is left of a certificate's lifetime: days, or hours and minutes for the last
    two days (a short-lived certificate spends a third of its life there)."""
    if days <= 0:
        return "expired"
    if days >= 2:
        return f"{days:.1f}d"
    minutes = round(days * 1440)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _local_ca(store: FileStore, config: Config) -> dict[str, Any] | None:
    """The local CA and how to trust it, with ``CERTPROXY_LOCAL_CA=1``; None otherwise."""
    if not config.local_ca:
        return None
    from ..service.trust import trust_recipe

    try:
        ca = store.load_local_ca()
    except StoreError as exc:
        return {"error": str(exc)}
    if ca is None:
        return {"error": f"no local CA in {store.local_ca_folder} yet (certproxy serve makes it)"}
    return {"folder": str(ca.folder), "fingerprint": ca.fingerprint, "recipe": trust_recipe(ca, config)}


def _print_served(url: str | None, served: list[dict[str, Any]] | None) -> None:
    if served is None:
        print(f"no running certproxy answered at {url}" if url else "no HTTP listener configured")
        return
    print(f"served by the running certproxy ({url}):")
    for c in served:
        print(
            f"  {c.get('name')}  {c.get('kind')}  serial {c.get('serial')}  "
            f"loaded at {c.get('loaded_at')}  expires {c.get('not_after')}"
        )
