"""A stub Kubernetes API server for the install tests (no kube-apiserver can run here).

What is real: HTTPS on 127.0.0.1 with a certificate from a CA given to the
client in a kubeconfig, bearer-token authentication (401 without it), the REST
paths of the kinds ``render`` produces (core ``/api/v1`` and ``/apis/GROUP/VERSION``,
namespaced and cluster-scoped), GET/POST/PUT/PATCH/DELETE, ``Status`` error
bodies (404 NotFound, 409 AlreadyExists/Conflict, 403 Forbidden, 415, 422 Invalid),
``resourceVersion`` (bumped on every real change, checked on PUT),
``generation`` (bumped on spec changes), ``dryRun=All``, a Secret's
``stringData`` folded into ``data``, lists filtered by an equality label
selector, a deleted Namespace staying ``Terminating`` for a while (refusing new
content, as the real one does) when asked to, and a few server-side defaults so
that clients must tolerate fields they did not send.

What is stubbed: server-side apply merges the applied object into the live one
(maps merged, lists replaced) and does not track field ownership; there is no
admission, schema validation, RBAC (403s are injected per verb and resource),
watch, or garbage collection (deleting a Namespace deletes what is in it at
once). The Deployment controller is a timer: ``ready_after`` seconds after a
Deployment's generation changes, its status says all replicas are available;
``ready_after=None`` means it never becomes ready.
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.support import Pair

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, namespace, plural, name)

# (group, version, plural) -> (kind, namespaced)
KINDS: dict[tuple[str, str, str], tuple[str, bool]] = {
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "secrets"): ("Secret", True),
    ("", "v1", "configmaps"): ("ConfigMap", True),
    ("", "v1", "services"): ("Service", True),
    ("", "v1", "serviceaccounts"): ("ServiceAccount", True),
    ("", "v1", "pods"): ("Pod", True),
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("policy", "v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True),
    ("networking.k8s.io", "v1", "networkpolicies"): ("NetworkPolicy", True),
    ("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations"): (
        "ValidatingWebhookConfiguration",
        False,
    ),
    ("monitoring.coreos.com", "v1", "servicemonitors"): ("ServiceMonitor", True),
}

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Call:
    """One request the stub received."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    status: int
    at: float
    note: str = ""

    @property
    def dry_run(self) -> bool:
        return "All" in self.query.get("dryRun", [])

    @property
    def write(self) -> bool:
        return self.method in WRITE_METHODS and not self.dry_run


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_body(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _reports_ready(obj: Obj) -> bool:
    if obj.get("kind") != "Deployment":
        return False
    status = obj.get("status") or {}
    return bool(
        status.get("observedGeneration") == obj["metadata"].get("generation")
        and status.get("availableReplicas", 0) >= obj["spec"].get("replicas", 1)
    )


def merge(live: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also our stand-in for server-side apply)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(live) if isinstance(live, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


@dataclass
class Route:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    namespace: str | None
    name: str | None


@dataclass
class KubeStub:
    """The stub's state; ``serve()`` starts it, ``close()`` stops it."""

    token: str = "test-token"
    ready_after: float | None = 0.3
    # Seconds a deleted Namespace stays Terminating (0: gone at once).
    namespace_terminating_for: float = 0.0
    # (verb, plural) -> (code, reason); verbs are get/create/update/patch/delete.
    faults: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    objects: dict[Key, Obj] = field(default_factory=dict)
    # The resources served; drop one to act as a cluster without that CRD.
    kinds_served: dict[tuple[str, str, str], tuple[str, bool]] = field(
        default_factory=lambda: dict(KINDS)
    )
    calls: list[Call] = field(default_factory=list)
    _version: int = 100
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _pending_ready: dict[Key, float] = field(default_factory=dict)
    _pending_gone: dict[Key, float] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------
    def serve(self, pair: Pair) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                code, answer = stub.handle(
                    self.command,
                    self.path,
                    self.headers.get("Content-Type", ""),
                    self.headers.get("Authorization", ""),
                    body,
                )
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(pair.cert_path, pair.key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def kubeconfig(self, path: Path, ca_path: Path, token: str | None = None) -> Path:
        """Write a kubeconfig for this server, with one context named ``stub``."""
        import base64

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "stub",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(
                            ca_path.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": "tester", "user": {"token": token or self.token}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "tester"}}],
            "current-context": "stub",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # ---- inspection helpers for tests ------------------------------------
    def writes(self) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.write]

    def kinds_in_store(self) -> set[str]:
        with self._lock:
            return {str(obj["kind"]) for obj in self.objects.values()}

    def find(self, kind: str, name: str) -> Obj | None:
        with self._lock:
            self._run_controller()
            for obj in self.objects.values():
                if obj["kind"] == kind and obj["metadata"]["name"] == name:
                    return copy.deepcopy(obj)
            return None

    # ---- request handling ------------------------------------------------
    def handle(
        self, method: str, raw_path: str, content_type: str, auth: str, body: bytes
    ) -> tuple[int, Obj]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        with self._lock:
            try:
                scheme, _, credentials = auth.partition(" ")
                # The scheme is case-insensitive (RFC 7235); the in-cluster loader sends "bearer".
                if scheme.lower() != "bearer" or credentials != self.token:
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                self._run_controller()
                code, answer = self._dispatch(method, parts.path, query, content_type, body)
            except ApiError as error:
                code, answer = error.code, status_body(error.code, error.reason, error.message)
            note = "ready" if method == "GET" and _reports_ready(answer) else ""
            self.calls.append(
                Call(method, parts.path, query, content_type, code, time.monotonic(), note)
            )
            return code, answer

    def _route(self, path: str) -> Route:
        segments = [s for s in path.split("/") if s]
        if segments[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        plural = rest[0]
        known = self.kinds_served.get((group, version, plural))
        if known is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        kind, namespaced = known
        if namespaced != (namespace is not None):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return Route(
            group, version, plural, kind, namespaced, namespace, rest[1] if len(rest) == 2 else None
        )

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], content_type: str, body: bytes
    ) -> tuple[int, Obj]:
        route = self._route(path)
        verb = {
            "GET": "get",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }[method]
        fault = self.faults.get((verb, route.plural))
        if fault is not None:
            code, reason = fault
            group = route.group or '""'
            resource = f"{route.plural}.{route.group}" if route.group else route.plural
            scope = (
                f'in the namespace "{route.namespace}"'
                if route.namespace
                else "at the cluster scope"
            )
            raise ApiError(
                code,
                reason,
                f'{resource} "{route.name}" is forbidden: User "tester" '
                f'cannot {verb} resource "{route.plural}" in API group {group} {scope}'
                if code == 403
                else f"{route.kind} {route.name!r} is invalid: injected {code}",
            )
        dry_run = "All" in query.get("dryRun", [])
        if route.name is None:
            if method == "GET":
                return 200, self._list(route, query.get("labelSelector", [""])[0])
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
            return self._create(route, self._decode(body, content_type), dry_run)
        key = self._key(route, route.name)
        live = self.objects.get(key)
        if method == "GET":
            if live is None:
                raise self._not_found(route)
            return 200, copy.deepcopy(live)
        if method == "DELETE":
            if live is None:
                raise self._not_found(route)
            if dry_run:
                return 200, copy.deepcopy(live)
            if route.kind == "Namespace" and self.namespace_terminating_for > 0:
                live["metadata"].setdefault(
                    "deletionTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                )
                live["status"] = {"phase": "Terminating"}
                self._pending_gone.setdefault(
                    key, time.monotonic() + self.namespace_terminating_for
                )
                return 200, copy.deepcopy(live)
            self._remove(key)
            return 200, status_body(200, "", "deleted") | {"status": "Success"}
        if method == "PUT":
            if live is None:
                raise self._not_found(route)
            obj = self._decode(body, content_type)
            sent = obj.get("metadata", {}).get("resourceVersion")
            if sent != live["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {route.plural} "{route.name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            return 200, self._store(route, key, obj, live, dry_run)
        # PATCH
        if content_type.startswith("application/apply-patch+yaml"):
            if not query.get("fieldManager"):
                raise ApiError(
                    400, "BadRequest", "PATCH requests with apply content type need a fieldManager"
                )
            patch = yaml.safe_load(body)
            self._check_identity(route, patch, route.name)
            if live is None:
                return self._create(route, patch, dry_run, check_exists=False)
            return 200, self._store(route, key, merge(live, patch), live, dry_run)
        if content_type.startswith("application/merge-patch+json"):
            if live is None:
                raise self._not_found(route)
            return 200, self._store(route, key, merge(live, json.loads(body)), live, dry_run)
        raise ApiError(
            415, "UnsupportedMediaType", f"the body of type {content_type} is unsupported"
        )

    def _list(self, route: Route, selector: str) -> Obj:
        """A list, filtered by an equality-only label selector (k=v,k2=v2)."""
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        items = [
            copy.deepcopy(obj)
            for (group, namespace, plural, _name), obj in sorted(self.objects.items())
            if (group, namespace, plural) == (route.group, route.namespace or "", route.plural)
            and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
        ]
        return {
            "kind": f"{route.kind}List",
            "apiVersion": f"{route.group}/{route.version}" if route.group else route.version,
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    # ---- storage ---------------------------------------------------------
    @staticmethod
    def _decode(body: bytes, content_type: str) -> Obj:
        if not content_type.startswith("application/json"):
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of type {content_type} is unsupported"
            )
        obj = json.loads(body)
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "body is not an object")
        return obj

    def _key(self, route: Route, name: str) -> Key:
        return (route.group, route.namespace or "", route.plural, name)

    def _not_found(self, route: Route) -> ApiError:
        group = f".{route.group}" if route.group else ""
        return ApiError(404, "NotFound", f'{route.plural}{group} "{route.name}" not found')

    def _check_identity(self, route: Route, obj: Obj, name: str | None) -> None:
        api_version = f"{route.group}/{route.version}" if route.group else route.version
        if obj.get("kind") != route.kind or obj.get("apiVersion") != api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) does not match "
                f"the expected API version ({api_version})",
            )
        metadata = obj.get("metadata") or {}
        if not metadata.get("name"):
            raise ApiError(
                422, "Invalid", f"{route.kind} is invalid: metadata.name: Required value"
            )
        if name is not None and metadata["name"] != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        if route.namespaced and metadata.get("namespace") not in (None, route.namespace):
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")

    def _create(
        self, route: Route, obj: Obj, dry_run: bool, check_exists: bool = True
    ) -> tuple[int, Obj]:
        self._check_identity(route, obj, route.name)
        name = obj["metadata"]["name"]
        key = self._key(route, name)
        if check_exists and key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{route.plural} "{name}" already exists')
        if route.namespaced:
            namespace = self.objects.get(("", "", "namespaces", route.namespace or ""))
            if namespace is None:
                raise ApiError(404, "NotFound", f'namespaces "{route.namespace}" not found')
            if "deletionTimestamp" in namespace["metadata"]:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{route.plural} "{name}" is forbidden: unable to create new content in '
                    f"namespace {route.namespace} because it is being terminated",
                )
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        metadata.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            generation=1,
        )
        if route.namespaced:
            metadata["namespace"] = route.namespace
        self._default(obj)
        if dry_run:
            return 201, obj
        self._version += 1
        metadata["resourceVersion"] = str(self._version)
        self.objects[key] = obj
        self._changed(key, obj)
        return 201, copy.deepcopy(obj)

    def _store(self, route: Route, key: Key, obj: Obj, live: Obj, dry_run: bool) -> Obj:
        self._check_identity(route, obj, route.name)
        obj = copy.deepcopy(obj)
        for kept in ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace"):
            if kept in live["metadata"]:
                obj["metadata"][kept] = live["metadata"][kept]
        if "status" in live:
            obj["status"] = live["status"]  # the main resource ignores status writes
        self._default(obj)
        if obj == live:
            return copy.deepcopy(live)
        if obj.get("spec") != live.get("spec"):
            obj["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
        if dry_run:
            return obj
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self.objects[key] = obj
        self._changed(key, obj)
        return copy.deepcopy(obj)

    @staticmethod
    def _default(obj: Obj) -> None:
        """A few of the defaults the real API server fills in."""
        kind = obj["kind"]
        if kind == "Secret":
            string_data = obj.pop("stringData", None) or {}
            import base64

            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj.setdefault("type", "Opaque")
        elif kind == "Namespace":
            labels = obj["metadata"].setdefault("labels", {})
            labels.setdefault("kubernetes.io/metadata.name", obj["metadata"]["name"])
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        elif kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", "10.96.0.42")
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports", []):
                port.setdefault("protocol", "TCP")
        elif kind == "Deployment":
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            pod = spec.get("template", {}).setdefault("spec", {})
            pod.setdefault("restartPolicy", "Always")
            pod.setdefault("dnsPolicy", "ClusterFirst")
            for container in pod.get("containers", []):
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("imagePullPolicy", "IfNotPresent")
            obj.setdefault("status", {})
        elif kind == "ValidatingWebhookConfiguration":
            for hook in obj.get("webhooks", []):
                hook.setdefault("matchPolicy", "Equivalent")
                hook.setdefault("objectSelector", {})

    # ---- the "deployment controller" -------------------------------------
    def _changed(self, key: Key, obj: Obj) -> None:
        if obj["kind"] != "Deployment":
            return
        status = obj.get("status") or {}
        if status.get("observedGeneration") == obj["metadata"]["generation"]:
            return
        if self.ready_after is not None:
            self._pending_ready[key] = time.monotonic() + self.ready_after

    def _remove(self, key: Key) -> None:
        obj = self.objects.pop(key)
        if obj["kind"] == "Namespace":
            for other in [k for k in self.objects if k[1] == obj["metadata"]["name"]]:
                del self.objects[other]

    def _run_controller(self) -> None:
        now = time.monotonic()
        for key, when in list(self._pending_gone.items()):
            if when <= now:
                del self._pending_gone[key]
                if key in self.objects:
                    self._remove(key)
        for key, when in list(self._pending_ready.items()):
            if when > now:
                continue
            del self._pending_ready[key]
            obj = self.objects.get(key)
            if obj is None:
                continue
            replicas = int(obj["spec"].get("replicas", 1))
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {
                        "type": "Progressing",
                        "status": "True",
                        "reason": "NewReplicaSetAvailable",
                    },
                ],
            }
            self._version += 1
            obj["metadata"]["resourceVersion"] = str(self._version)
