"""``kube-audit-rest certs``: a CA and a serving certificate for the webhook's Service.

Writes ``ca.crt``, ``ca.key``, ``tls.crt`` and ``tls.key`` (keys mode 0600) and
prints the CA bundle in base64 on stdout, so ``CA=$(kube-audit-rest certs ...)``
works; everything meant for a person goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Callable

from kube_audit_rest.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_LEAF_DAYS,
    KEY_TYPES,
    issue_serving_pair,
    service_names,
)
from kube_audit_rest.config import fail
from kube_audit_rest.manifests import DEFAULT_NAME, DEFAULT_NAMESPACE, dns_label
from kube_audit_rest.subparser import SubcommandParser

_HOST_LABEL = re.compile(r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
MAX_DAYS = 36500


def _san(text: str) -> str:
    """A DNS name (a leading '*.' wildcard allowed) or an IP address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    labels = name.split(".")
    ok = (
        0 < len(name) <= 253
        and all(len(label) <= 63 and _HOST_LABEL.match(label) for label in labels)
        and "*" not in labels[1:]
    )
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a DNS name nor an IP address")
    return name


def _days() -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= MAX_DAYS:
            raise argparse.ArgumentTypeError(
                f"expected whole days from 1 to {MAX_DAYS}, got {text!r}"
            )
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = SubcommandParser(
        prog="kube-audit-rest certs",
        description="Create a CA and a serving certificate for the webhook Service "
        "(<service>.<namespace>.svc and .svc.cluster.local, plus --san), write ca.crt, ca.key, "
        "tls.crt and tls.key to --out-dir, and print the CA bundle in base64 (the webhook's "
        "caBundle) on stdout.",
    )
    add = parser.add_argument
    add("--out-dir", default=".", metavar="DIR", help="folder for the files (default .)")
    add(
        "--service",
        type=dns_label("service name"),
        default=DEFAULT_NAME,
        help=f"Service name (default {DEFAULT_NAME})",
    )
    add(
        "--namespace",
        type=dns_label("namespace"),
        default=DEFAULT_NAMESPACE,
        help=f"namespace of the Service (default {DEFAULT_NAMESPACE})",
    )
    add(
        "--san",
        type=_san,
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the certificate (repeatable)",
    )
    add(
        "--key-type",
        choices=KEY_TYPES,
        default="ecdsa",
        help="ecdsa (P-256, default) or rsa (2048 bits)",
    )
    add(
        "--days",
        type=_days(),
        default=DEFAULT_LEAF_DAYS,
        help=f"validity of the serving certificate (default {DEFAULT_LEAF_DAYS})",
    )
    add(
        "--ca-days",
        type=_days(),
        default=DEFAULT_CA_DAYS,
        help=f"validity of the CA, at least --days (default {DEFAULT_CA_DAYS})",
    )
    add("--force", action="store_true", help="replace files that already exist")
    return parser


FILES = (("ca.crt", 0o644), ("ca.key", 0o600), ("tls.crt", 0o644), ("tls.key", 0o600))


def _write(folder: str, name: str, data: bytes, mode: int, force: bool) -> None:
    """Write a whole file with *mode*; never a half-written or wider-mode one.

    Without *force* the file is created exclusively. With it, the data goes to
    a temporary file in the same folder that then replaces the old one.
    """
    path = os.path.join(folder, name)
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)  # the umask may have narrowed it; never widened
        return
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.ca_days < args.days:
        fail(f"--ca-days ({args.ca_days}) must be at least --days ({args.days})")
    folder = args.out_dir
    names = service_names(args.service, args.namespace)
    names.extend(name for name in args.san if name not in names)

    if os.path.exists(folder) and not os.path.isdir(folder):
        fail(f"--out-dir {folder} is not a directory")
    existing = [n for n, _ in FILES if os.path.lexists(os.path.join(folder, n))]
    if existing and not args.force:
        fail(f"{', '.join(existing)} already exist in {folder}; pass --force to replace them")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as error:
        fail(f"cannot create --out-dir {folder}: {error.strerror}")

    pair = issue_serving_pair(
        names,
        key_type=args.key_type,
        days=args.days,
        ca_days=args.ca_days,
        ca_label=f"{args.service}.{args.namespace}.svc",
    )
    contents = {
        "ca.crt": pair.ca_cert,
        "ca.key": pair.ca_key,
        "tls.crt": pair.cert,
        "tls.key": pair.key,
    }
    try:
        for name, mode in FILES:
            _write(folder, name, contents[name], mode, args.force)
    except OSError as error:
        fail(f"cannot write {error.filename or folder}: {error.strerror}")

    sys.stderr.write(
        f"kube-audit-rest: wrote ca.crt, ca.key, tls.crt and tls.key to {folder} "
        f"({args.key_type}; certificate valid {args.days} days, CA {args.ca_days} days) for "
        f"{', '.join(names)}; the base64 CA bundle for the webhook's caBundle follows on stdout. "
        "Keep ca.key secret, or delete it if you will not sign another certificate.\n"
    )
    sys.stdout.write(base64.b64encode(pair.ca_cert).decode("ascii") + "\n")
    return 0
