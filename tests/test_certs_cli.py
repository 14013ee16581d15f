"""`kube-audit-rest certs`, run as a user runs it, and a real server on its output."""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import StartServer
from tests.k8s_support import run_cli
from tests.support import Pair, review

FILES = ("ca.crt", "ca.key", "tls.crt", "tls.key")
SERVICE_NAMES = [
    "kube-audit-rest",
    "kube-audit-rest.kube-audit-rest",
    "kube-audit-rest.kube-audit-rest.svc",
    "kube-audit-rest.kube-audit-rest.svc.cluster.local",
]


def _certs(out: Path, *args: str) -> str:
    result = run_cli("certs", f"--out-dir={out}", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _validity(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def test_writes_four_files_with_private_keys_and_prints_the_ca_bundle(tmp_path: Path) -> None:
    out = tmp_path / "new" / "tls"
    stdout = _certs(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name, mode in (("ca.key", 0o600), ("tls.key", 0o600), ("ca.crt", 0o644)):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    # stdout is exactly the caBundle, so CA=$(kube-audit-rest certs ...) works.
    assert stdout == base64.b64encode((out / "ca.crt").read_bytes()).decode() + "\n"
    for name in ("ca.key", "tls.key"):
        serialization.load_pem_private_key((out / name).read_bytes(), password=None)


@pytest.mark.parametrize(
    ("key_type", "key_class", "size"),
    [("ecdsa", ec.EllipticCurvePublicKey, 256), ("rsa", rsa.RSAPublicKey, 2048)],
)
def test_certificate_names_usage_and_validity(
    tmp_path: Path, key_type: str, key_class: type, size: int
) -> None:
    args = ["--san=audit.example.com", "--san=10.0.0.7", f"--key-type={key_type}"]
    if key_type == "ecdsa":
        args = args[:2]  # the default
    _certs(tmp_path, *args)
    ca, leaf = _load(tmp_path / "ca.crt"), _load(tmp_path / "tls.crt")
    for cert in (ca, leaf):
        assert isinstance(cert.public_key(), key_class)
        assert cert.public_key().key_size == size  # type: ignore[union-attr]
    if key_type == "ecdsa":
        public = leaf.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert isinstance(public.curve, ec.SECP256R1)

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [*SERVICE_NAMES, "audit.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    # Names live in the SAN; the CN is no host name a client could rely on.
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert not set(common_names) & set(SERVICE_NAMES)

    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_constraints.ca is True and ca_constraints.path_length == 0
    assert leaf.issuer == ca.subject

    day = datetime.timedelta(days=1)
    assert abs(_validity(leaf) - 365 * day) < day
    assert abs(_validity(ca) - 3650 * day) < day

    store = verification.Store([ca])
    for name in SERVICE_NAMES:
        verifier = (
            verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        )
        verifier.verify(leaf, [])


def test_validity_and_names_follow_the_options(tmp_path: Path) -> None:
    _certs(tmp_path, "--service=audit", "--namespace=ops", "--days=30", "--ca-days=60")
    leaf, ca = _load(tmp_path / "tls.crt"), _load(tmp_path / "ca.crt")
    day = datetime.timedelta(days=1)
    assert abs(_validity(leaf) - 30 * day) < day
    assert abs(_validity(ca) - 60 * day) < day
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "audit",
        "audit.ops",
        "audit.ops.svc",
        "audit.ops.svc.cluster.local",
    ]


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    _certs(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}

    again = run_cli("certs", f"--out-dir={tmp_path}")
    assert again.returncode == 2
    assert again.stdout == ""
    assert again.stderr.count("\n") == 1
    assert again.stderr.startswith("kube-audit-rest: error: ")
    assert "--force" in again.stderr
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before

    forced = _certs(tmp_path, "--force")
    after = {name: (tmp_path / name).read_bytes() for name in FILES}
    assert all(after[name] != before[name] for name in FILES)
    assert forced == base64.b64encode(after["ca.crt"]).decode() + "\n"
    for name in ("ca.key", "tls.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name not in FILES]  # no temporaries


def test_one_existing_file_is_enough_to_refuse(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_text("mine")
    result = run_cli("certs", f"--out-dir={tmp_path}")
    assert result.returncode == 2
    assert "tls.key" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tls.key"]
    assert (tmp_path / "tls.key").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--key-type=dsa"], "--key-type"),
        (["--san=not a name"], "--san"),
        (["--san=-bad-.example"], "--san"),
        (["--namespace=Not_Valid"], "--namespace"),
        (["--service="], "--service"),
        (["--days=0"], "--days"),
        (["--days=ten"], "--days"),
        (["--days=400", "--ca-days=100"], "--ca-days"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_options_give_one_error_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    result = run_cli("certs", f"--out-dir={tmp_path / 'out'}", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kube-audit-rest: error: ")
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = run_cli("certs", f"--out-dir={target}")
    assert result.returncode == 2
    assert (
        result.stderr.startswith("kube-audit-rest: error: ") and "not a directory" in result.stderr
    )


def _post_over(context: ssl.SSLContext, port: int, hostname: str, uid: str) -> int:
    """POST a review over a TLS connection to 127.0.0.1 that verifies *hostname*."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.sock = context.wrap_socket(raw, server_hostname=hostname)
        conn.request(
            "POST", "/log-request", body=review(uid), headers={"Content-Type": "application/json"}
        )
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()
        raw.close()


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_server_on_certs_output_is_trusted_with_only_the_ca_bundle(
    tmp_path: Path, start: StartServer, key_type: str
) -> None:
    out = tmp_path / "tls"
    bundle = _certs(out, f"--key-type={key_type}")
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(base64.b64decode(bundle))  # what the API server gets: the caBundle
    pair = Pair(ca_file, out / "tls.crt", out / "tls.key", 0.0)
    server = start("--workers=1", pair=pair)

    only_ca = ssl.create_default_context(cafile=str(ca_file))
    status = _post_over(only_ca, server.port, "kube-audit-rest.kube-audit-rest.svc", "svc-1")
    assert status == 200
    assert [r["request"]["uid"] for r in server.records()] == ["svc-1"]

    # Negative controls: another Service name, or a client without the CA, fail.
    with pytest.raises(ssl.SSLCertVerificationError):
        _post_over(only_ca, server.port, "kube-audit-rest.other.svc", "svc-2")
    system_roots = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        _post_over(system_roots, server.port, "kube-audit-rest.kube-audit-rest.svc", "svc-3")
    assert [r["request"]["uid"] for r in server.records()] == ["svc-1"]


def test_readme_documents_every_certs_option() -> None:
    from kube_audit_rest.certs_cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Certificates: `kube-audit-rest certs`", 1)[1].split("\n### ", 1)[0]
    flags = [
        flag
        for action in build_parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    ]
    missing = [flag for flag in flags if f"| `{flag}" not in section]
    assert not missing, f"README's certs table lacks {missing}"
