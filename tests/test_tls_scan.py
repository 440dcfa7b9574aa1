"""certproxy's TLS configuration scanned by testssl.sh (Debian package).

The certificate is made here as a CA would issue it for production (90 days,
a CRL distribution point, the scanned name), and testssl is told to trust its
CA, so every finding is about certproxy's TLS configuration, not about a test
certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.procs import CertproxyProcess, free_port
from support.upstreams import RawUpstream

pytestmark = pytest.mark.integration


def _production_like_pair(folder: Path) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certproxy scan CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("http://crl.certproxy.test/ca.crl")], None, None, None)]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    live = folder / "live" / "localhost"
    live.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    (live / "fullchain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (live / "privkey.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (live / "privkey.pem").chmod(0o600)
    ca_file = folder / "scan-ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    return ca_file


async def test_testssl_finds_nothing_high_or_critical(
        certproxy_factory: Callable[..., CertproxyProcess], tmp_path: Path) -> None:
    store = tmp_path / "store"
    ca_file = _production_like_pair(store)
    up = await RawUpstream().start()
    port = free_port()
    await asyncio.to_thread(certproxy_factory, {port: up.url}, store)
    report = tmp_path / "testssl.json"
    scan = await asyncio.to_thread(subprocess.run, [
        "testssl", "--quiet", "--color", "0", "--warnings", "off", "--add-ca", str(ca_file),
        "--ip", "127.0.0.1", "--jsonfile", str(report),
        "-p", "-s", "-f", "-U", "-S", "-h", f"localhost:{port}"],
        capture_output=True, text=True, timeout=600)
    await up.close()
    assert report.exists(), scan.stdout[-2000:] + scan.stderr[-2000:]
    findings = {f["id"]: f for f in json.loads(report.read_text())}
    bad = {i: f["finding"] for i, f in findings.items() if f["severity"] in ("HIGH", "CRITICAL")}
    assert bad == {}
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[old]["finding"] == "not offered", old
    assert findings["TLS1_2"]["finding"] == "offered"
    assert findings["TLS1_3"]["finding"].startswith("offered")
    for weak in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                 "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
        assert findings[weak]["finding"] == "not offered", weak
    assert findings["PFS"]["finding"] == "offered"
    ciphers = findings["PFS_ciphers"]["finding"].split()
    assert ciphers and all(c.startswith(("TLS_", "ECDHE-")) for c in ciphers)
    assert findings["HSTS_time"]["finding"].startswith("365 days")
