"""In transit: `depot serve --tls-cert --tls-key` serves HTTPS with HSTS; every answer carries
the security headers (app/security_headers.py), errors included."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.main import create_app
from tests.research_server import DEPOT_VARIABLES
from tests.services import die_with_parent, free_ports, log_tail, stop


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, valid for a day, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imaging-depot test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_every_answer_carries_the_security_headers_and_no_hsts_over_http(settings):
    client = TestClient(create_app(settings))
    for response in (client.get("/healthz"), client.get("/projects/alpha/dicom-web/studies")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers
    docs = client.get("/docs")
    assert docs.status_code == 200 and "content-security-policy" not in docs.headers


def test_depot_serve_with_a_certificate_speaks_https_with_hsts(tmp_path):
    cert, key = self_signed(tmp_path)
    environment = {k: v for k, v in os.environ.items() if k not in DEPOT_VARIABLES}
    environment["DEPOT_DATA_DIR"] = str(tmp_path / "data")
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    depot = Path(sys.executable).with_name("depot")
    command = [str(depot), "serve", "--port", str(port), "--tls-cert", str(cert)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--tls-key", str(key)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        url = f"https://127.0.0.1:{port}/healthz"
        deadline, answer = time.monotonic() + 30, None
        while answer is None and time.monotonic() < deadline:
            assert process.poll() is None, log_tail(log)
            try:
                answer = httpx.get(url, verify=str(cert), timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 200, log_tail(log)
        assert answer.headers["strict-transport-security"].startswith("max-age=31536000")
        assert "https://127.0.0.1" in log.read_text()
        try:  # plain HTTP on the TLS port gets no answer worth the name
            plain = httpx.get(url.replace("https", "http"), timeout=2).status_code
        except httpx.HTTPError:
            plain = None
        assert plain != 200
    finally:
        stop(process, grace=5)


def test_a_certificate_without_its_key_is_refused_with_one_sentence(tmp_path):
    cert, _key = self_signed(tmp_path)
    result = CliRunner().invoke(cli_app, ["serve", "--tls-cert", str(cert)])
    assert result.exit_code == 2
    assert "--tls-cert and --tls-key go together" in result.output
