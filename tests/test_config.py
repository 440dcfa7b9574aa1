"""Configuration: parsing, precedence (flags > environment > file > defaults), errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from certproxy.service.config import (
    LETSENCRYPT_STAGING, Config, ConfigError, load_config, parse_routes,
)


def test_defaults_follow_the_design() -> None:
    cfg = load_config({})
    assert cfg.store == Path("/var/lib/certproxy")
    assert cfg.http_port == 80
    assert [(r.port, r.url) for r in cfg.routes] == [
        (443, "http://registry-ui:80"), (5000, "http://registry:5000")]
    assert cfg.cert_domains == ("localhost",)
    assert cfg.acme_enabled is False
    assert cfg.redirect_port == 443


def test_routes_parse_ports_schemes_and_default_ports() -> None:
    routes = parse_routes("8443=https://ui.internal, 5000=http://[::1]:5001", "X")
    assert [(r.port, r.url, r.scheme, r.host, r.upstream_port) for r in routes] == [
        (8443, "https://ui.internal:443", "https", "ui.internal", 443),
        (5000, "http://[::1]:5001", "http", "::1", 5001),
    ]


@pytest.mark.parametrize("value, message", [
    ("443", "is not PORT=URL"),
    ("443=registry:5000", "needs an http:// or https:// scheme"),
    ("443=ftp://registry", "needs an http:// or https:// scheme"),
    ("70000=http://registry:5000", "out of range"),
    ("0=http://registry:5000", "out of range"),
    ("abc=http://registry:5000", "is not a port number"),
    ("443=http://registry:5000/v2", "scheme://host[:port] only"),
    ("443=http://a:1,443=http://b:2", "routed twice"),
    ("443=http://", "has no host"),
])
def test_bad_routes_name_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"CERTPROXY_ROUTES": value})
    assert err.value.source == "CERTPROXY_ROUTES"
    assert message in str(err.value)


@pytest.mark.parametrize("env, source", [
    ({"CERTPROXY_HTTP_PORT": "99999"}, "CERTPROXY_HTTP_PORT"),
    ({"CERTPROXY_HTTP_PORT": "http"}, "CERTPROXY_HTTP_PORT"),
    ({"CERTPROXY_STAGING": "maybe"}, "CERTPROXY_STAGING"),
    ({"CERTPROXY_DOMAINS": "exa mple.com"}, "CERTPROXY_DOMAINS"),
    ({"CERTPROXY_DOMAINS": "-bad-.com"}, "CERTPROXY_DOMAINS"),
    ({"CERTPROXY_BIND": "everywhere"}, "CERTPROXY_BIND"),
    ({"CERTPROXY_ACME_DIRECTORY": "acme.example/dir"}, "CERTPROXY_ACME_DIRECTORY"),
    ({"CERTPROXY_UPSTREAM_READ_TIMEOUT": "-1"}, "CERTPROXY_UPSTREAM_READ_TIMEOUT"),
    ({"CERTPROXY_LOG_FORMAT": "xml"}, "CERTPROXY_LOG_FORMAT"),
    ({"CERTPROXY_HTTP_PORT": "5000"}, "CERTPROXY_HTTP_PORT"),  # clashes with a route
])
def test_bad_values_name_their_variable(env: dict[str, str], source: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env)
    assert err.value.source == source


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    conf = tmp_path / "certproxy.toml"
    conf.write_text('store = "/from/file"\nhttp_port = 8080\nbind = "127.0.0.1"\n'
                    'domains = ["reg.example.com", "ui.example.com"]\n'
                    'routes = { "8443" = "http://127.0.0.1:9000" }\n')
    cfg = load_config({"CERTPROXY_HTTP_PORT": "8081", "CERTPROXY_STORE": "/from/env"},
                      {"store": "/from/flag"}, conf)
    assert cfg.store == Path("/from/flag")
    assert cfg.http_port == 8081
    assert cfg.bind == "127.0.0.1"
    assert cfg.domains == ("reg.example.com", "ui.example.com")
    assert cfg.acme_enabled is True
    assert cfg.redirect_port == 8443


def test_config_file_from_the_environment_reaches_every_command(tmp_path: Path) -> None:
    """CERTPROXY_CONFIG names the file when --config is not given (in a container, the
    HEALTHCHECK's `certproxy healthcheck` then sees the port the file sets)."""
    conf = tmp_path / "certproxy.toml"
    conf.write_text("http_port = 8080\n")
    assert load_config({"CERTPROXY_CONFIG": str(conf)}).http_port == 8080
    other = tmp_path / "other.toml"
    other.write_text("http_port = 8081\n")
    assert load_config({"CERTPROXY_CONFIG": str(conf)}, None, other).http_port == 8081  # --config wins
    with pytest.raises(ConfigError, match=r"CERTPROXY_CONFIG .*missing.toml: cannot read"):
        load_config({"CERTPROXY_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match="did you mean CERTPROXY_CONFIG"):
        load_config({"CERTPROXY_CONFG": str(conf)})


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("http_port = 123456\n")
    with pytest.raises(ConfigError, match="c.toml: http_port"):
        load_config({}, None, conf)
    conf.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_config({}, None, conf)
    conf.write_text("this is not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, None, conf)


def test_http_listener_can_be_switched_off_and_staging_selects_the_directory() -> None:
    cfg = load_config({"CERTPROXY_HTTP_PORT": "off", "CERTPROXY_STAGING": "1"})
    assert cfg.http_port is None
    assert cfg.directory_url == LETSENCRYPT_STAGING
    cfg = load_config({"CERTPROXY_STAGING": "1", "CERTPROXY_ACME_DIRECTORY": "https://ca.test/dir"})
    assert cfg.directory_url == "https://ca.test/dir"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.bind = "::"  # type: ignore[misc]


@pytest.mark.parametrize("env, needle", [
    ({"CERTPROXY_ROUTES": "443=registry:5000"}, "CERTPROXY_ROUTES"),
    ({"CERTPROXY_HTTP_PORT": "0x50"}, "CERTPROXY_HTTP_PORT"),
])
def test_serve_exits_2_with_one_line(env: dict[str, str], needle: str, tmp_path: Path) -> None:
    full = {"PATH": "/usr/bin:/bin", "CERTPROXY_STORE": str(tmp_path), **env}
    proc = subprocess.run([sys.executable, "-m", "certproxy", "serve"], env=full,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_serve_exits_2_when_the_store_is_unusable(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    env = {"PATH": "/usr/bin:/bin", "CERTPROXY_STORE": str(not_a_folder),
           "CERTPROXY_HTTP_PORT": "off", "CERTPROXY_ROUTES": "1=http://127.0.0.1:2"}
    proc = subprocess.run([sys.executable, "-m", "certproxy", "serve"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "CERTPROXY_STORE" in proc.stderr and "Traceback" not in proc.stderr
