"""compose/metrics/ against Debian's Prometheus: the alert rules check and pass their unit
tests, and every dashboard panel's and every rule's PromQL returns data from a Prometheus that
scraped a real certproxy while skopeo pushed and pulled through it, with the alerts firing.

The scenario of the real test (``test_every_panel_and_rule_returns_data_and_the_alerts_fire``)
makes every alert's condition true on purpose: certproxy serves a certificate that expires in 3
days from a store whose ACME CA cannot be reached (the expiry alert; renewal is due and every
order fails: the renewal alert), one of its routes has no upstream (upstream down, and its 502s
are the 5xx error rate), and three uploads are cut mid-layer (uploads failing). The rules run
as shipped, except their ``for:``, shortened to 2 s (``promtool test rules`` checks the real
durations with alerts.test.yml). Each rule is also evaluated without its threshold: the
expression up to its first comparison outside brackets (``without_threshold``), which must
return data whether the condition holds or not.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from support.access_site import POLICY, write_users
from support.oci import layer_digests, make_image
from support.procs import ROOT, CertproxyProcess, free_port, http_ok, stop_process, wait_for
from support.registry import Registry

METRICS = ROOT / "compose" / "metrics"
DASHBOARD = METRICS / "certproxy-dashboard.json"
ALERTS = METRICS / "alerts.yml"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
JOB = "certproxy"
# What the test puts in for Grafana's variables: every job's, instance's and repository's
# series (the variables' "All", whose allValue is .+), and the intervals of a short range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
                     "$job": JOB, "$instance": ".+", "$repository": ".+"}
FOR_IN_TEST = "2s"
ALERT_NAMES = {"CertproxyCertificateExpiringSoon", "CertproxyRenewalFailing", "CertproxyUpstreamDown",
               "CertproxyHighErrorRate", "CertproxyUploadsFailing"}


def _run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules_and_the_layers_configuration() -> None:
    rules = _run(PROMTOOL, "check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 5 rules found" in rules.stdout
    config = _run(PROMTOOL, "check", "config", str(METRICS / "prometheus.yml"))  # its rule_files too
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_rules_unit_tests_pass_with_the_shipped_for_durations() -> None:
    out = _run(PROMTOOL, "test", "rules", "alerts.test.yml", cwd=METRICS)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {t["alert_rule_test"][0]["alertname"]
              for t in yaml.safe_load((METRICS / "alerts.test.yml").read_text())["tests"]}
    assert tested == {rule["alert"] for rule in rules()} == ALERT_NAMES


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return [p for p in out if p["type"] != "row"]


def grafana(expr: str) -> str:
    """A target's expression as Grafana sends it, with the test's values for the variables."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def without_threshold(expr: str) -> str:
    """The expression up to its first comparison outside brackets and strings:
    ``rate(x[5m]) / rate(y[5m]) > 0.05`` -> ``rate(x[5m]) / rate(y[5m])``, and for
    ``a > 0 and on (n) b < time()`` -> ``a``. (Comparisons bind tighter than ``and``,
    ``unless`` and ``or``, so that is the first operand's value before its threshold.)"""
    depth, quote, i = 0, "", 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and (m := _COMPARISON.match(expr, i)):
            return expr[:m.start()].strip()
        i += 1
    return expr.strip()


def test_without_threshold() -> None:
    assert without_threshold('sum(rate(x{code="5xx"}[5m])) / sum(rate(x[5m])) > 0.05') == \
        'sum(rate(x{code="5xx"}[5m])) / sum(rate(x[5m]))'
    assert without_threshold('increase(f{a!="b"}[6h]) > 0\nand on (name) n < time()') == \
        'increase(f{a!="b"}[6h])'
    assert without_threshold('(e{kind="live"} - time()) < 7 * 86400') == '(e{kind="live"} - time())'
    assert without_threshold("up == 0") == "up"
    assert without_threshold("up") == "up"


def test_the_dashboard_is_importable_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert dashboard["uid"] and dashboard["id"] is None and dashboard["schemaVersion"] >= 36
    seen_ids, cells = set(), set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in seen_ids
        seen_ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"] and t["expr"].strip()
            grafana(t["expr"])  # only variables the test knows
    for name in ("job", "instance", "repository"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".+"


# -- the real test ---------------------------------------------------------------------------


class Prometheus:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with Prometheus' error
            error = exc.read().decode(errors="replace")
            raise AssertionError(f"{path} {params}: {exc.code} {error}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def last_scrape(self) -> float:
        """When the latest scrape of certproxy started (0: none yet)."""
        result = self.query(f'timestamp(up{{job="{JOB}"}} == 1)')
        return float(result[0]["value"][1]) if result else 0.0

    def scraped_after(self, moment: float, timeout: float = 60) -> float:
        """Waits for a scrape that started at least a second after ``moment`` (the counters of
        what ended at ``moment`` are in it); its time."""
        wait_for(lambda: self.last_scrape() >= moment + 1, timeout, "a scrape of certproxy",
                 self.proc, self.log)
        return self.last_scrape()

    def settled(self, expr: str, moment: float, timeout: float = 60) -> dict[str, str]:
        """``expr``'s series once two scrapes in a row after ``moment`` agree on them."""
        deadline = time.monotonic() + timeout
        at = self.scraped_after(moment, timeout)
        seen = _series(self.query(expr, at))
        while time.monotonic() < deadline:
            at = self.scraped_after(at, timeout)
            again = _series(self.query(expr, at))
            if again == seen:
                return seen
            print(f"not settled at {at:.3f} (after {moment:.3f}): {_changed(seen, again)}")
            seen = again
        raise TimeoutError(f"{expr} still changing {timeout} s after {moment:.3f}")


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[int, Path], Prometheus]]:
    started: list[Prometheus] = []

    def start(admin_port: int, rules_file: Path) -> Prometheus:
        port = free_port()
        folder = tmp_path / f"prom-{port}"
        folder.mkdir()
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_file)],
            "scrape_configs": [{"job_name": JOB,
                                "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}],
        }))
        log = folder / "prometheus.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                                     f"--storage.tsdb.path={folder / 'data'}",
                                     f"--web.listen-address=127.0.0.1:{port}",
                                     "--storage.tsdb.retention.time=1d"],
                                    stdout=fh, stderr=subprocess.STDOUT, cwd=folder)
        prom = Prometheus(proc, port, log)
        started.append(prom)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), 60, "prometheus", proc, log)
        return prom

    yield start
    for prom in started:
        stop_process(prom.proc)


def _rules_for_the_test(folder: Path) -> Path:
    """alerts.yml as shipped, with every ``for:`` shortened (the scenario lasts seconds)."""
    groups = yaml.safe_load(ALERTS.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_IN_TEST
    out = folder / "alerts-test.yml"
    out.write_text(yaml.safe_dump(groups, sort_keys=False))
    return out


def _store_with_a_certificate_expiring_in_3_days(root: Path, ca: trustme.CA) -> trustme.LeafCert:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    leaf = ca.issue_cert("localhost", "127.0.0.1", not_before=now - dt.timedelta(days=60),
                        not_after=now + dt.timedelta(days=3))
    folder = root / "live" / "localhost"
    folder.mkdir(parents=True)
    (folder / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (folder / "privkey.pem").write_bytes(leaf.private_key_pem.bytes())
    (folder / "privkey.pem").chmod(0o600)
    return leaf


def _skopeo(*args: str) -> None:
    out = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr


def _cut_upload(port: int, ctx: ssl.SSLContext, repository: str) -> None:
    """Opens an upload and sends part of a PATCH's body, then goes away (a client killed
    mid-layer): the upload is aborted."""
    def request(sock: ssl.SSLSocket, head: str, body: bytes = b"") -> bytes:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        return data

    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        answer = request(sock, f"POST /v2/{repository}/blobs/uploads/ HTTP/1.1\r\nHost: localhost:{port}\r\n"
                               "Content-Length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
        location = re.search(rb"(?im)^location: *(\S+)", answer).group(1).decode()  # type: ignore[union-attr]
        path = urllib.parse.urlsplit(location)
        target = path.path + (f"?{path.query}" if path.query else "")
        sock.sendall(f"PATCH {target} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                     "Content-Type: application/octet-stream\r\nContent-Length: 4194304\r\n\r\n".encode()
                     + b"\0" * 65536)
        time.sleep(0.3)  # the part is on its way to the registry; now the client is gone


def _series(result: list[dict[str, Any]]) -> dict[str, str]:
    """Series (without the job and instance labels) -> value, as Prometheus returned them."""
    out = {}
    for item in result:
        labels = {k: v for k, v in item["metric"].items() if k not in ("job", "instance")}
        name = labels.pop("__name__", "")
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        out[f"{name}{{{inner}}}"] = item["value"][1]
    return out


def _changed(before: dict[str, str], after: dict[str, str]) -> str:
    return "\n".join(f"{name} {before.get(name, '(new)')} -> {value}"
                     for name, value in sorted(after.items()) if before.get(name) != value)


@pytest.mark.integration
def test_every_panel_and_rule_returns_data_and_the_alerts_fire(
        tmp_path: Path, ca: trustme.CA, ca_dir: Path, registry: Registry,
        certproxy_factory: Callable[..., CertproxyProcess],
        prometheus_factory: Callable[[int, Path], Prometheus]) -> None:
    started = time.monotonic()
    store = tmp_path / "store"
    _store_with_a_certificate_expiring_in_3_days(store, ca)
    port, dead_route, admin, gated = free_port(), free_port(), free_port(), free_port()
    write_users(tmp_path / "htpasswd")
    (tmp_path / "access.toml").write_text(POLICY)
    nothing = free_port()  # nothing listens here: the dead route's upstream and the ACME CA
    # Prometheus first, so that it scrapes certproxy from its first seconds: renewal orders
    # fail from the start, at growing intervals, and increase() needs one it has seen.
    prom = prometheus_factory(admin, _rules_for_the_test(tmp_path))
    routes = {port: registry.url, dead_route: f"http://127.0.0.1:{nothing}", gated: registry.url}
    cp = certproxy_factory(routes, store, extra_env={
        "CERTPROXY_ADMIN_PORT": str(admin),
        "CERTPROXY_REGISTRY_PORTS": str(port),  # the registry route (5000 by default)
        # a second way to the registry, behind the access policy (its refusals and failed logins)
        "CERTPROXY_ACCESS": str(tmp_path / "access.toml"), "CERTPROXY_ACCESS_PORTS": str(gated),
        "CERTPROXY_DOMAINS": "localhost",
        "CERTPROXY_EMAIL": "ops@certproxy.test",
        "CERTPROXY_ACME_DIRECTORY": f"http://127.0.0.1:{nothing}/directory",
        "CERTPROXY_ACME_RETRY_MIN": "0.5",  # orders fail at once; retries 0.5, 1, 1, 2.5 ... s apart
    })
    wait_for(lambda: prom.last_scrape() > 0, 60, "the first scrape of certproxy", prom.proc, prom.log)

    # One push and one pull, through certproxy, with the series they produced.
    image = tmp_path / "image"
    make_image(image, 1 << 20)
    ref = f"docker://localhost:{port}/metrics/app:v1"
    registry_series = '{__name__=~"certproxy_registry_.+"}'
    before = prom.settled(registry_series, time.time())
    _skopeo("copy", "--dest-cert-dir", str(ca_dir), f"oci:{image}:v1", ref)
    pushed = prom.settled(registry_series, time.time())
    _skopeo("copy", "--src-cert-dir", str(ca_dir), ref, f"oci:{tmp_path / 'pulled'}:v1")
    assert layer_digests(tmp_path / "pulled") == layer_digests(image)
    pulled = prom.settled(registry_series, time.time())
    print(f"\n== certproxy_registry_* series changed by one push:\n{_changed(before, pushed)}")
    print(f"== changed by one pull:\n{_changed(pushed, pulled)}")
    assert float(pushed['certproxy_registry_pushed_bytes_total{repository="metrics/app"}']) > 1 << 20
    assert float(pulled['certproxy_registry_pulled_bytes_total{repository="metrics/app"}']) > 1 << 20

    # The conditions of the alerts, on purpose: uploads cut mid-layer, 502s from the route
    # without an upstream, and a client that does not trust the certificate. (A counter's
    # series appears with its first failure, which increase() cannot see: Prometheus has no
    # sample of it at 0. Three more after the first scrape of it make an increase of 3.)
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    # A wrong password and an anonymous push on the route behind the access policy.
    wrong = base64.b64encode(b"bob:not-bobs-password").decode()
    for target, headers in (("/token?service=localhost&scope=repository:team/x:push", {"Authorization": f"Basic {wrong}"}),
                            ("/v2/team/x/blobs/uploads/", {})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"https://localhost:{gated}{target}", headers=headers,
                                                          method="GET" if target.startswith("/token") else "POST",
                                                          data=None if target.startswith("/token") else b""),
                                   context=ctx, timeout=30)
        assert refused.value.code == 401
    _cut_upload(port, ctx, "metrics/failing")
    prom.scraped_after(time.time())
    for _ in range(3):
        _cut_upload(port, ctx, "metrics/failing")
    for _ in range(5):
        with pytest.raises(urllib.error.HTTPError) as bad_gateway:
            urllib.request.urlopen(f"https://localhost:{dead_route}/", context=ctx, timeout=30)
        assert bad_gateway.value.code == 502
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    wait_for(lambda: bool(prom.query("increase(certproxy_renewal_failures_total[6h]) > 0")), 120,
             "a failed renewal order seen by Prometheus", prom.proc, prom.log)
    at = prom.scraped_after(time.time())

    # Every panel's expression, as Grafana would send it, at the moment of that scrape.
    empty = []
    checked = 0
    for panel in panels():
        for target in panel["targets"]:
            expr = grafana(target["expr"])
            checked += 1
            if not prom.query(expr, at):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    # Grafana's variable queries, label_values(SELECTOR, LABEL), as PromQL.
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for var in variables:
        if var["type"] == "query":
            selector, label = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"]).groups()  # type: ignore[union-attr]
            if not prom.query(f"group by ({label}) ({grafana(selector)})", at):
                empty.append(f"variable {var['name']}: {var['query']['query']}")
    # Every rule's expression: as it stands (each condition was made true) and without its threshold.
    for rule in rules():
        for expr in (rule["expr"], without_threshold(rule["expr"])):
            if not prom.query(expr, at):
                empty.append(f"rule {rule['alert']}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert checked >= 20

    # And the alerts fire (with the test's short `for:`), the certificate's among them.
    def firing() -> set[str]:
        return {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"}

    try:
        wait_for(lambda: firing() >= ALERT_NAMES, 60, "every alert firing", prom.proc, prom.log)
    except TimeoutError:
        values = {rule["alert"]: prom.query(without_threshold(rule["expr"])) for rule in rules()}
        pytest.fail(f"firing: {sorted(firing())}, expected {sorted(ALERT_NAMES)}; the rules' values now: "
                    f"{json.dumps(values, indent=1)}")
    alerts = {a["labels"]["alertname"]: a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"}
    expiring = alerts["CertproxyCertificateExpiringSoon"]
    assert expiring["labels"]["name"] == "localhost" and expiring["labels"]["kind"] == "live"
    assert "expires in 2d 23h" in expiring["annotations"]["summary"]
    assert alerts["CertproxyUpstreamDown"]["labels"]["route"] == str(dead_route)
    assert alerts["CertproxyHighErrorRate"]["labels"]["route"] == str(dead_route)
    assert alerts["CertproxyUploadsFailing"]["labels"]["repository"] == "metrics/failing"
    assert alerts["CertproxyUploadsFailing"]["labels"]["reason"] == "aborted"
    assert "ordering a certificate" in cp.output()
    print(f"== {checked} panel queries, {len(rules())} rules; {time.monotonic() - started:.1f} s")
