"""The Kubernetes objects that run kube-audit-rest in a cluster.

One function builds them all, as plain dicts in the order they must be applied
(the ValidatingWebhookConfiguration last, so the API server is never told to
call a webhook that has no Deployment behind it). ``render`` prints them,
``install`` applies them, and ``k8s/`` holds the same objects with the default
options (a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kube_audit_rest import __version__

APP = "kube-audit-rest"
DEFAULT_NAME = "kube-audit-rest"
DEFAULT_NAMESPACE = "kube-audit-rest"
DEFAULT_IMAGE = f"kube-audit-rest:{__version__}"
UID = 255999
WEBHOOK_PORT = 9090
METRICS_PORT = 55555
SERVICE_PORT = 443
TLS_DIR = "/etc/tls"
LOG_DIR = "/var/log/kube-audit-rest"
LOG_FILE = f"{LOG_DIR}/kube-audit-rest.log"
TMP_DIR = "/tmp"  # noqa: S108 - the runtime directory's volume, an emptyDir
# Holds the workers' metric files, the write lock, gunicorn's heartbeat files
# and the last good TLS pair; a few MiB in practice.
TMP_SIZE_LIMIT = "64Mi"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
FAILURE_POLICIES = ("Ignore", "Fail")

# Measured by bench/run.py (README "Performance"): master + 2 workers + the
# metrics process hold 128-140 MB resident under load, 1 MiB bodies included.
# The request covers that with headroom; the limit leaves room for the memory
# backed /tmp volume and bursts of large bodies (README "Reliability": 32
# concurrent 16 MiB bodies).
WORKERS = 2
RESOURCES = {
    "requests": {"cpu": "500m", "memory": "256Mi"},
    "limits": {"cpu": "2", "memory": "512Mi"},
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Everything the manifests depend on, with the defaults ``k8s/`` uses."""

    namespace: str = DEFAULT_NAMESPACE
    name: str = DEFAULT_NAME
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    replicas: int = 2
    operations: tuple[str, ...] = ("*",)
    # "*/*" is every resource and every subresource: pods/exec, pods/attach and
    # pods/portforward (CONNECT) and status updates reach the webhook too.
    resources: tuple[str, ...] = ("*/*",)
    skip_namespaces: tuple[str, ...] = field(default=())
    failure_policy: str = "Ignore"
    timeout_seconds: int = 1
    service_monitor: bool = False
    logger_max_size: int = 500
    logger_max_backups: int = 1
    cert_dir: str | None = None
    # The read-only web UI as a sidecar in each pod, plus its Service (README "Web UI").
    ui: bool = False

    @property
    def secret_name(self) -> str:
        return f"{self.name}-tls"

    @property
    def service_host(self) -> str:
        """The name the API server connects to (and the certificate must hold)."""
        return f"{self.name}.{self.namespace}.svc"

    @property
    def excluded_namespaces(self) -> list[str]:
        """The webhook's own namespace first (so it cannot lock itself out), then the rest."""
        names = [self.namespace]
        names.extend(n for n in self.skip_namespaces if n not in names)
        return names

    @property
    def log_volume_mib(self) -> int:
        """The log emptyDir: the active file plus every kept backup, each at most max-size."""
        return self.logger_max_size * (self.logger_max_backups + 1)


def labels(options: RenderOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": options.name}


def _metadata(options: RenderOptions, name: str, namespaced: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespaced:
        metadata["namespace"] = options.namespace
    metadata["labels"] = labels(options)
    return metadata


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def namespace(options: RenderOptions) -> dict[str, Any]:
    meta = _metadata(options, options.namespace, namespaced=False)
    # The Deployment meets the "restricted" Pod Security Standard; enforce it.
    meta["labels"] = {
        **meta["labels"],
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def secret(
    options: RenderOptions, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(options, options.secret_name),
        "type": "kubernetes.io/tls",
        "data": {"ca.crt": _b64(ca_pem), "tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem)},
    }


def service(options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options, options.name),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(options),
            "ports": [
                {"name": "https", "port": SERVICE_PORT, "targetPort": "https", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def server_args(options: RenderOptions) -> list[str]:
    return [
        f"--cert-filename={TLS_DIR}/tls.crt",
        f"--cert-key-filename={TLS_DIR}/tls.key",
        f"--logger-filename={LOG_FILE}",
        f"--logger-max-size={options.logger_max_size}",
        f"--logger-max-backups={options.logger_max_backups}",
        f"--server-port={WEBHOOK_PORT}",
        f"--metrics-port={METRICS_PORT}",
        # Pinned rather than counted from the node's CPUs, so memory stays
        # within the limit below whatever node the pod lands on.
        f"--workers={WORKERS}",
    ]


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


UI_PORT = 8080
UI_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
UI_INDEX_DIR = "/var/lib/kube-audit-rest-ui"
UI_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}


def ui_container(options: RenderOptions) -> dict[str, Any]:
    """The UI sidecar: the same image, the log volume read-only, 127.0.0.1 only.

    A sidecar, because the log is an emptyDir of each pod: only a container in
    the same pod can read it. It listens on the pod's loopback, so nothing in
    the cluster network reaches it; ``kubectl port-forward`` (which connects
    inside the pod) does.
    """
    return {
        "name": "ui",
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "args": [
            "ui",
            f"--logger-filename={LOG_FILE}",
            f"--index-dir={UI_INDEX_DIR}",
            "--address=127.0.0.1",
            f"--port={UI_PORT}",
        ],
        "env": [{"name": "TMPDIR", "value": TMP_DIR}],
        "ports": [{"name": "ui", "containerPort": UI_PORT, "protocol": "TCP"}],
        "resources": {key: dict(value) for key, value in UI_RESOURCES.items()},
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "logs", "mountPath": LOG_DIR, "readOnly": True},
            {"name": "ui-index", "mountPath": UI_INDEX_DIR},
            {"name": "ui-tmp", "mountPath": TMP_DIR},
        ],
    }


def ui_volumes(options: RenderOptions) -> list[dict[str, Any]]:
    return [
        # The SQLite index: rebuilt from the log if the pod restarts elsewhere.
        {"name": "ui-index", "emptyDir": {"sizeLimit": f"{options.log_volume_mib * 2}Mi"}},
        {"name": "ui-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def ui_service(options: RenderOptions) -> dict[str, Any]:
    """A stable name for ``kubectl port-forward svc/NAME-ui 8080``; the UI is on loopback."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options, f"{options.name}-ui"),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(options),
            "ports": [{"name": "ui", "port": UI_PORT, "targetPort": "ui", "protocol": "TCP"}],
        },
    }


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def deployment(options: RenderOptions) -> dict[str, Any]:
    container = {
        "name": APP,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "args": server_args(options),
        "env": [{"name": "TMPDIR", "value": TMP_DIR}],
        "ports": [
            {"name": "https", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": _probe("/readyz", 1, 30),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "resources": {key: dict(value) for key, value in RESOURCES.items()},
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "logs", "mountPath": LOG_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": labels(options)},
                        },
                    }
                ]
            }
        },
        "containers": [container],
        "volumes": [
            {"name": "tls", "secret": {"secretName": options.secret_name, "defaultMode": 0o440}},
            # Sized for the active file plus every kept backup (--logger-max-size
            # MiB each); going over would get the pod evicted.
            {"name": "logs", "emptyDir": {"sizeLimit": f"{options.log_volume_mib}Mi"}},
            # $TMPDIR: the runtime directory (see README "Runtime directory").
            # In memory: gunicorn's heartbeat and the TLS key copy stay off disk.
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": TMP_SIZE_LIMIT}},
        ],
    }
    template_metadata: dict[str, Any] = {"labels": labels(options)}
    if options.ui:
        pod_spec["containers"].append(ui_container(options))
        pod_spec["volumes"].extend(ui_volumes(options))
        # kubectl logs/exec without -c keep meaning the webhook container.
        template_metadata["annotations"] = {UI_DEFAULT_CONTAINER: APP}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options, options.name),
        "spec": {
            "replicas": options.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": labels(options)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def pod_disruption_budget(options: RenderOptions) -> dict[str, Any]:
    # maxUnavailable rather than minAvailable: with one replica a node drain
    # can still proceed instead of being blocked for ever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(options, options.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(options)}},
    }


def service_monitor(options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(options, options.name),
        "spec": {
            "selector": {"matchLabels": labels(options)},
            "namespaceSelector": {"matchNames": [options.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    }


def webhook_configuration(options: RenderOptions, ca_pem: bytes) -> dict[str, Any]:
    webhook = {
        "name": f"{options.name}.{options.namespace}.svc",
        "admissionReviewVersions": ["v1", "v1beta1"],
        "sideEffects": "None",
        "failurePolicy": options.failure_policy,
        "timeoutSeconds": options.timeout_seconds,
        "matchPolicy": "Equivalent",
        "clientConfig": {
            "service": {
                "name": options.name,
                "namespace": options.namespace,
                "path": "/log-request",
                "port": SERVICE_PORT,
            },
            "caBundle": _b64(ca_pem),
        },
        "rules": [
            {
                "operations": list(options.operations),
                "apiGroups": ["*"],
                "apiVersions": ["*"],
                "resources": list(options.resources),
                "scope": "*",
            }
        ],
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": options.excluded_namespaces,
                }
            ]
        },
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _metadata(options, options.name, namespaced=False),
        "webhooks": [webhook],
    }


def build_manifests(
    options: RenderOptions, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> list[dict[str, Any]]:
    """Every object, in apply order: the webhook configuration comes last."""
    objects = [
        namespace(options),
        secret(options, ca_pem, cert_pem, key_pem),
        service(options),
        *([ui_service(options)] if options.ui else []),
        deployment(options),
        pod_disruption_budget(options),
    ]
    if options.service_monitor:
        objects.append(service_monitor(options))
    objects.append(webhook_configuration(options, ca_pem))
    return objects


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """One multi-document YAML stream, keys in the order they were built."""
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, width=1000)


# --- command-line options shared by ``render`` and ``install`` ---


def dns_label(what: str) -> Callable[[str], str]:
    """An argparse type for a Kubernetes name that must be a DNS (RFC 1123) label."""

    def parse(text: str) -> str:
        if len(text) > 63 or not _DNS_LABEL.match(text):
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}: must be a DNS label (lower-case letters, digits "
                "and '-', at most 63 characters)"
            )
        return text

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        return value

    return parse


def _operations(text: str) -> tuple[str, ...]:
    items = tuple(item.strip().upper() for item in text.split(",") if item.strip())
    allowed = {"*", *OPERATIONS}
    bad = [item for item in items if item not in allowed]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of {', '.join(OPERATIONS)} or *"
        )
    if "*" in items and len(items) > 1:
        raise argparse.ArgumentTypeError("'*' must stand alone")
    return items


_RESOURCE = re.compile(r"^(\*|[a-z0-9][-a-z0-9.]*)(/(\*|[a-z0-9][-a-z0-9.]*))?$")


def _resources(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    bad = [item for item in items if not _RESOURCE.match(item)]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of resources such as "
            "'pods,deployments,pods/exec' ('*/*' is everything)"
        )
    if "*/*" in items and len(items) > 1:
        raise argparse.ArgumentTypeError("'*/*' must stand alone")
    return items


def _namespaces(text: str) -> tuple[str, ...]:
    check = dns_label("namespace")
    return tuple(check(item.strip()) for item in text.split(",") if item.strip())


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that shape the manifests (``render`` and ``install`` share them)."""
    d = RenderOptions()
    group = parser.add_argument_group("manifest options")
    add = group.add_argument
    add(
        "--namespace",
        type=dns_label("namespace"),
        default=d.namespace,
        help=f"namespace to run in, excluded from the webhook (default {d.namespace})",
    )
    add(
        "--service",
        dest="name",
        type=dns_label("service name"),
        default=d.name,
        help=f"name of the Service, Deployment and webhook configuration (default {d.name})",
    )
    add("--image", default=d.image, help=f"container image (default {d.image})")
    add(
        "--image-pull-policy",
        choices=("Always", "IfNotPresent", "Never"),
        default=d.image_pull_policy,
        help=f"(default {d.image_pull_policy})",
    )
    add(
        "--replicas",
        type=_int_between(1, 100),
        default=d.replicas,
        help=f"pods in the Deployment (default {d.replicas})",
    )
    add(
        "--operations",
        type=_operations,
        default=d.operations,
        metavar="OPS",
        help="comma-separated operations sent to the webhook: CREATE, UPDATE, DELETE, "
        "CONNECT, or * for all (default *)",
    )
    add(
        "--resources",
        type=_resources,
        default=d.resources,
        metavar="RESOURCES",
        help="comma-separated resources sent to the webhook, in every API group, e.g. "
        "'pods,deployments,pods/exec' (default */*: all resources and subresources)",
    )
    add(
        "--skip-namespaces",
        type=_namespaces,
        default=d.skip_namespaces,
        metavar="NAMESPACES",
        help="comma-separated namespaces whose objects are not sent to the webhook, besides "
        "its own (default none)",
    )
    add(
        "--failure-policy",
        choices=FAILURE_POLICIES,
        default=d.failure_policy,
        help="what the API server does when the webhook fails: Ignore lets the change "
        "through unrecorded, Fail rejects it (default Ignore)",
    )
    add(
        "--timeout",
        dest="timeout_seconds",
        type=_int_between(1, 30),
        default=d.timeout_seconds,
        metavar="SECONDS",
        help=f"webhook timeout in whole seconds, 1 to 30 (default {d.timeout_seconds})",
    )
    add(
        "--service-monitor",
        action="store_true",
        help="also a Prometheus Operator ServiceMonitor for the metrics port",
    )
    add(
        "--logger-max-size",
        type=_int_between(1, 1024 * 1024),
        default=d.logger_max_size,
        metavar="MB",
        help=f"server flag; the log volume is sized from it (default {d.logger_max_size})",
    )
    add(
        "--logger-max-backups",
        type=_int_between(1, 1000),
        default=d.logger_max_backups,
        metavar="N",
        help="server flag; the log volume holds max-size x (backups + 1) "
        f"(default {d.logger_max_backups})",
    )
    add(
        "--ui",
        action="store_true",
        help="also the read-only web UI: a sidecar in each pod reading the log volume, on the "
        "pod's 127.0.0.1:8080, and a Service NAME-ui for kubectl port-forward",
    )
    add(
        "--cert-dir",
        default=None,
        metavar="DIR",
        help="use ca.crt, tls.crt and tls.key from DIR (as written by `kube-audit-rest certs`) "
        "instead of generating a fresh pair",
    )


def options_from_args(args: argparse.Namespace) -> RenderOptions:
    """The RenderOptions for arguments parsed with ``add_render_arguments``."""
    return RenderOptions(
        namespace=args.namespace,
        name=args.name,
        image=args.image,
        image_pull_policy=args.image_pull_policy,
        replicas=args.replicas,
        operations=tuple(args.operations),
        resources=tuple(args.resources),
        skip_namespaces=tuple(args.skip_namespaces),
        failure_policy=args.failure_policy,
        timeout_seconds=args.timeout_seconds,
        service_monitor=args.service_monitor,
        logger_max_size=args.logger_max_size,
        logger_max_backups=args.logger_max_backups,
        cert_dir=args.cert_dir,
        ui=args.ui,
    )


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM bytes for the Secret and the caBundle."""

    ca_cert: bytes
    cert: bytes
    key: bytes


def tls_material(options: RenderOptions) -> TlsMaterial:
    """Read the pair from ``options.cert_dir`` and check it, or issue a fresh one.

    Raises ValueError (one line) when the files are missing or would not be
    trusted by the API server for ``options.service_host``.
    """
    import os

    from kube_audit_rest.certs import check_serving_pair, issue_serving_pair, service_names

    if options.cert_dir is None:
        pair = issue_serving_pair(
            service_names(options.name, options.namespace), ca_label=options.service_host
        )
        return TlsMaterial(pair.ca_cert, pair.cert, pair.key)
    contents: dict[str, bytes] = {}
    for file_name in ("ca.crt", "tls.crt", "tls.key"):
        path = os.path.join(options.cert_dir, file_name)
        try:
            with open(path, "rb") as handle:
                contents[file_name] = handle.read()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
    try:
        check_serving_pair(
            contents["ca.crt"], contents["tls.crt"], contents["tls.key"], options.service_host
        )
    except ValueError as error:
        raise ValueError(f"{options.cert_dir}: {error}") from None
    return TlsMaterial(contents["ca.crt"], contents["tls.crt"], contents["tls.key"])
