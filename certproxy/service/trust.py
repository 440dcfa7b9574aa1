"""How clients come to trust the local CA (``CERTPROXY_LOCAL_CA=1``): one line each,
for the start-up log, ``certproxy status`` and the examples in docs/certificates.md alike."""

from __future__ import annotations

from ..certs.local_ca import LocalCA
from .config import Config


def ca_url(config: Config) -> str | None:
    """Where the plain-HTTP listener serves ``ca.crt``; None when it is off."""
    if config.http_port is None:
        return None
    host = config.cert_domains[0]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}/ca.crt" if config.http_port == 80 else f"http://{host}:{config.http_port}/ca.crt"


def trust_recipe(ca: LocalCA, config: Config) -> list[str]:
    """The lines that make Docker, podman/skopeo and a browser trust ``ca``."""
    host = config.cert_domains[0]
    if ":" in host:  # an IPv6 address: docker and containers/image name the folder [::1]:5000
        host = f"[{host}]"
    url = ca_url(config)
    fetch = f"curl -fsS {url}" if url else f"cat {ca.folder / 'ca.crt'}"
    lines = [f"local CA {ca.cert.subject.rfc4514_string()}, SHA-256 fingerprint {ca.fingerprint}"]
    for port in sorted(r.port for r in config.routes):
        authority = host if port == 443 else f"{host}:{port}"
        lines.append(
            f"docker (no restart needed): sudo mkdir -p /etc/docker/certs.d/{authority} && {fetch}"
            f" | sudo tee /etc/docker/certs.d/{authority}/ca.crt >/dev/null"
        )
    lines.append(
        f"podman, skopeo: the same into /etc/containers/certs.d/{host}:PORT/ca.crt"
        " (or --cert-dir / --dest-cert-dir with a folder holding ca.crt)"
    )
    lines.append(
        f"browser: download {url or 'ca.crt'} and import it as a trusted authority"
        " (Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities >"
        " Import; Chrome: Settings > Privacy and security > Security > Manage certificates)"
    )
    lines.append(
        "check what you fetched (plain HTTP can be tampered with on the way): "
        "openssl x509 -noout -fingerprint -sha256 -in ca.crt"
    )
    return lines
