"""``kube-audit-rest install`` and ``uninstall``: the objects ``render`` prints, on a cluster.

install: every object except the ValidatingWebhookConfiguration is applied in
order, then the command waits for the Deployment's rollout to complete, and
only then registers the webhook, so the API server never calls a webhook
that has no ready pod behind it. uninstall removes the webhook configuration
first, then the rest in reverse order.

Certificates: a second install reuses the pair in the cluster's Secret when it
is still good (signed by its ``ca.crt``, matching key, valid for the Service
name, more than ``RENEW_DAYS`` left); the webhook's caBundle is that
``ca.crt``. Otherwise (or with ``--rotate-certs``) a new CA and certificate
are issued, and the new ``ca.crt`` keeps the old CA next to the new one, so the
API server trusts both the old and the new serving certificate while pods
pick up the new one; on a rotation the webhook configuration is updated to
that bundle before the Secret changes.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from kube_audit_rest.kube_apply import (
    Cluster,
    KubeError,
    Outcome,
    apply_one,
    delete_one,
    describe,
    wait_for_deployment,
    wait_until_absent,
)
from kube_audit_rest.subparser import SubcommandParser

RENEW_DAYS = 30
DEFAULT_WAIT = 180.0
# Never deleted by uninstall, whatever --namespace says.
SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})

Obj = dict[str, Any]


def _die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"kube-audit-rest: error: {message}\n")
    raise SystemExit(code)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0 and at most 86400, got {text!r}"
        )
    return value


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster options")
    group.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig to use (default: $KUBECONFIG, else ~/.kube/config, else the pod's "
        "service account when run inside a cluster)",
    )
    group.add_argument("--context", help="kubeconfig context (default: its current-context)")
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="only read from the cluster, and print what would change",
    )


@dataclass(frozen=True)
class Certificates:
    """The PEM bytes to install, and the words for the Secret's line."""

    ca_bundle: bytes
    cert: bytes
    key: bytes
    note: str
    rotated: bool


def _secret_pems(secret: Obj | None) -> dict[str, bytes]:
    data = (secret or {}).get("data") or {}
    pems: dict[str, bytes] = {}
    for key in ("ca.crt", "tls.crt", "tls.key"):
        try:
            pems[key] = base64.b64decode(data[key], validate=True)
        except (KeyError, TypeError, ValueError):
            continue
    return pems


def _not_after(cert_pem: bytes) -> datetime.datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def _still_valid_cas(bundle: bytes, now: datetime.datetime) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificates = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []
    return [
        c.public_bytes(serialization.Encoding.PEM)
        for c in certificates
        if c.not_valid_after_utc > now
    ]


def _bundle_with_old_ca(new_ca: bytes, old_bundle: bytes, now: datetime.datetime) -> bytes:
    """The new CA, then the newest still-valid CA of the old bundle (if another one)."""
    for old in _still_valid_cas(old_bundle, now)[:1]:
        if old.strip() != new_ca.strip():
            return new_ca.rstrip(b"\n") + b"\n" + old
    return new_ca


def _usable(pems: dict[str, bytes], host: str, now: datetime.datetime) -> str:
    """Why the Secret's pair cannot be kept ('' when it can)."""
    from kube_audit_rest.certs import check_serving_pair

    if len(pems) < 3:
        return "the Secret lacks ca.crt, tls.crt or tls.key"
    try:
        check_serving_pair(pems["ca.crt"], pems["tls.crt"], pems["tls.key"], host)
        expires = _not_after(pems["tls.crt"])
    except ValueError as error:
        return f"the Secret's pair is unusable: {error}"
    if expires - now <= datetime.timedelta(days=RENEW_DAYS):
        return f"the Secret's expire on {expires:%Y-%m-%d}, within {RENEW_DAYS} days"
    return ""


def choose_certificates(
    options: Any, live_secret: Obj | None, rotate: bool, now: datetime.datetime | None = None
) -> Certificates:
    """Reuse the Secret's pair when it is still good; otherwise issue (or read) a new one.

    A new pair replacing an existing one is a rotation: the bundle keeps the old
    CA after the new one, so the old certificate stays trusted until pods serve
    the new one.
    """
    from kube_audit_rest.manifests import tls_material

    now = now or datetime.datetime.now(datetime.UTC)
    pems = _secret_pems(live_secret)
    if options.cert_dir is not None:
        try:
            material = tls_material(options)
        except ValueError as error:
            _die(str(error), 2)
        note = f"certificates from {options.cert_dir}"
        if (pems.get("tls.crt"), pems.get("tls.key")) == (material.cert, material.key):
            # Already installed: keep the Secret's bundle if it still vouches for the pair.
            keep = "ca.crt" in pems and not _usable(pems, options.service_host, now)
            bundle = pems["ca.crt"] if keep else material.ca_cert
            return Certificates(bundle, material.cert, material.key, note, False)
        bundle = _bundle_with_old_ca(material.ca_cert, pems.get("ca.crt", b""), now)
        return Certificates(bundle, material.cert, material.key, note, live_secret is not None)
    if live_secret is None:
        reason = "new CA and certificate"
    elif rotate:
        reason = "new certificates (--rotate-certs)"
    else:
        why = _usable(pems, options.service_host, now)
        if not why:
            expires = _not_after(pems["tls.crt"])
            note = f"certificates reused (valid until {expires:%Y-%m-%d})"
            return Certificates(pems["ca.crt"], pems["tls.crt"], pems["tls.key"], note, False)
        reason = f"new certificates: {why}"
    material = tls_material(options)
    bundle = _bundle_with_old_ca(material.ca_cert, pems.get("ca.crt", b""), now)
    return Certificates(bundle, material.cert, material.key, reason, live_secret is not None)


def _print(outcome: Outcome, dry_run: bool, extra: str = "") -> None:
    line = outcome.line(dry_run)
    if extra:
        line = f"{line}; {extra}" if outcome.detail else f"{line}: {extra}"
    print(line, flush=True)


def install(args: argparse.Namespace, cluster: Cluster) -> None:
    from kube_audit_rest.manifests import build_manifests, options_from_args, secret

    options = options_from_args(args)
    dry_run: bool = args.dry_run
    probe = secret(options, b"", b"", b"")
    certs = choose_certificates(options, cluster.get(probe), args.rotate_certs)
    objects = build_manifests(options, certs.ca_bundle, certs.cert, certs.key)
    webhook, rest = objects[-1], objects[:-1]
    if webhook.get("kind") != "ValidatingWebhookConfiguration":
        raise KubeError("internal: the manifests do not end with the webhook configuration")

    if certs.rotated and cluster.get(webhook) is not None:
        # Trust the new CA (and still the old one) before any pod serves the new certificate.
        _print(apply_one(cluster, webhook, dry_run), dry_run, "caBundle now trusts the new CA")
    for obj in rest:
        if obj.get("kind") == "Namespace" and (reason := _foreign_namespace(cluster, obj)):
            print(f"{describe(obj)} kept: {reason}; its labels are left alone", flush=True)
            continue
        outcome = apply_one(cluster, obj, dry_run)
        _print(outcome, dry_run, certs.note if obj.get("kind") == "Secret" else "")
    for obj in rest:
        if obj.get("kind") != "Deployment":
            continue
        if dry_run:
            print(f"{describe(obj)} would be waited for (dry run)", flush=True)
            continue
        progress = wait_for_deployment(cluster, obj, args.wait_timeout, args.poll_interval)
        print(f"{describe(obj)} ready: {progress}", flush=True)
    _print(apply_one(cluster, webhook, dry_run), dry_run)


def _foreign_namespace(cluster: Cluster, obj: Obj) -> str:
    """Why an existing namespace is not ours to change or delete ('' if it is ours)."""
    from kube_audit_rest.manifests import APP

    if obj["metadata"]["name"] in SYSTEM_NAMESPACES:
        return "Kubernetes' own namespace"
    live = cluster.get(obj)
    if live is None:
        return ""
    labels = (live.get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/name") != APP:
        return f"it lacks the label app.kubernetes.io/name={APP}"
    return ""


def _remove_namespace(cluster: Cluster, obj: Obj, args: argparse.Namespace) -> None:
    """Delete the namespace only if install made it, and wait until it is gone."""
    if cluster.get(obj) is None:
        _print(Outcome(obj, "absent"), args.dry_run)
        return
    reason = _foreign_namespace(cluster, obj)
    if reason:
        print(f"{describe(obj)} kept: {reason}", flush=True)
        return
    if args.dry_run:
        _print(Outcome(obj, "deleted"), True)
        return
    if cluster.delete(obj):
        wait_until_absent(cluster, obj, args.wait_timeout, args.poll_interval)
        _print(Outcome(obj, "deleted"), False)
    else:
        _print(Outcome(obj, "absent"), False)


def uninstall(args: argparse.Namespace, cluster: Cluster) -> None:
    from kube_audit_rest.manifests import build_manifests, options_from_args, service_monitor

    options = options_from_args(args)
    # Names and kinds are all that matter here; the PEM contents are not sent.
    objects = build_manifests(options, b"", b"", b"")
    if not options.service_monitor:
        objects.insert(-1, service_monitor(options))  # remove one left by an earlier install
    webhook, rest = objects[-1], objects[:-1]
    ordered = [webhook, *reversed(rest)]
    if args.keep_namespace:
        ordered = [obj for obj in ordered if obj.get("kind") != "Namespace"]
    for obj in ordered:
        if obj.get("kind") == "Namespace":
            _remove_namespace(cluster, obj, args)
        else:
            _print(delete_one(cluster, obj, args.dry_run), args.dry_run)


def _parser(name: str) -> argparse.ArgumentParser:
    from kube_audit_rest.manifests import add_render_arguments

    if name == "install":
        description = (
            "Apply the objects `kube-audit-rest render` prints, wait for the Deployment to be "
            "ready, then register the webhook. A second run changes nothing and says so."
        )
    else:
        description = (
            "Remove what `install` created: the webhook configuration first, then the rest. "
            "Give the same --namespace and --service as to install."
        )
    parser = SubcommandParser(prog=f"kube-audit-rest {name}", description=description)
    add_render_arguments(parser)
    _add_cluster_arguments(parser)
    waited_for = "the Deployment to be ready" if name == "install" else "the namespace to go"
    parser.add_argument(
        "--wait-timeout",
        type=_positive_seconds,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for {waited_for} (default {DEFAULT_WAIT:g})",
    )
    parser.add_argument(
        "--poll-interval", type=_positive_seconds, default=1.0, help=argparse.SUPPRESS
    )
    if name == "install":
        parser.add_argument(
            "--rotate-certs",
            action="store_true",
            help="issue a new CA and certificate even if the Secret's are still good",
        )
    else:
        parser.add_argument(
            "--keep-namespace", action="store_true", help="leave the namespace in place"
        )
    return parser


def _run(
    name: str, action: Callable[[argparse.Namespace, Cluster], None], argv: Sequence[str]
) -> int:
    from kube_audit_rest.kube_connect import connect

    args = _parser(name).parse_args(list(argv))
    try:
        api_client = connect(args.kubeconfig, args.context)
        try:
            action(args, Cluster(api_client))
        finally:
            api_client.close()
    except KubeError as error:
        _die(str(error))
    except KeyboardInterrupt:
        _die("interrupted", 130)
    except Exception as error:  # no tracebacks for users; say what broke
        _die(f"{name} failed: {type(error).__name__}: {' '.join(str(error).split())}")
    return 0


def main(argv: list[str]) -> int:
    """``kube-audit-rest install``."""
    return _run("install", install, argv)


def main_uninstall(argv: list[str]) -> int:
    return _run("uninstall", uninstall, argv)
