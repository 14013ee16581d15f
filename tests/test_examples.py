"""examples/: every file parses, every manifest is valid offline, every guide's paths exist.

Kubernetes objects are validated against the published OpenAPI schemas
(kubernetes-validate) and loaded into the kubernetes client's models
(``tests/k8s_support.py``); the kustomize overlays are built with ``kubectl
kustomize`` on a copy of k8s/ with a certificate from ``kube-audit-rest certs``
(skipped without kubectl) and the result validated the same way. ECK's custom
resources have no schema here and get a structural check. The log shippers
cannot run here: their configuration files are parsed (YAML, TOML) and checked
against the manifests (paths they read are the volume the sidecar mounts).
The local guide is followed as written: its server command, its curl loop and
its jq queries, against the real server.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_support import MODELS, check_object, kustomize, load_yaml_stream, run_cli
from tests.support import CLI, free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LOG_DIR = "/var/log/kube-audit-rest"
UID = 255999
MAX_REQUEST_BYTES = 16 * 1024 * 1024

YAML_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yaml", ".yml"))
JSON_FILES = sorted(EXAMPLES.rglob("*.json"))
KUSTOMIZATIONS = sorted(EXAMPLES.rglob("kustomization.yaml"))
READMES = sorted(EXAMPLES.rglob("README.md"))
ECK_KINDS = {
    ("elasticsearch.k8s.elastic.co/v1", "Elasticsearch"),
    ("kibana.k8s.elastic.co/v1", "Kibana"),
}
# Sidecar name -> (example folder, shipper configuration file).
SHIPPERS = {
    "filebeat": ("full-elastic-stack", "filebeat.yml"),
    "vector": ("vector-to-siem", "vector.toml"),
}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _patch_files() -> set[Path]:
    patches: set[Path] = set()
    for kustomization in KUSTOMIZATIONS:
        spec = yaml.safe_load(kustomization.read_text())
        for patch in spec.get("patches", []):
            patches.add((kustomization.parent / patch["path"]).resolve())
    return patches


def test_the_three_examples_exist() -> None:
    names = {p.parent.name for p in READMES}
    assert {"seeing-audit-log-locally", "full-elastic-stack", "vector-to-siem"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_file_parses(path: Path) -> None:
    documents = load_yaml_stream(path.read_text())
    assert documents, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in documents)


# Whole objects; patches are validated as part of the built overlay, shipper
# configurations by their own tests, and the audit policies in examples/policies/
# (audit.k8s.io Policy files, not API objects) by tests/test_example_policies.py.
OBJECT_FILES = [
    p
    for p in YAML_FILES
    if p.name not in ("kustomization.yaml", "filebeat.yml")
    and p.resolve() not in _patch_files()
    and p.parent.name != "policies"
]


@pytest.mark.parametrize("path", OBJECT_FILES, ids=_rel)
def test_manifest_is_valid(path: Path) -> None:
    for obj in load_yaml_stream(path.read_text()):
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in ECK_KINDS:
            assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
            assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
            assert re.fullmatch(r"\d+\.\d+\.\d+", obj["spec"]["version"])
            continue
        assert key in MODELS, f"{path}: no check for {key}"
        check_object(obj)


@pytest.mark.parametrize("path", sorted(_patch_files()), ids=_rel)
def test_patch_targets_the_base_deployment(path: Path) -> None:
    (patch,) = load_yaml_stream(path.read_text())
    base = yaml.safe_load((REPO / "k8s" / "deployment.yaml").read_text())
    assert (patch["apiVersion"], patch["kind"]) == (base["apiVersion"], base["kind"])
    assert patch["metadata"]["name"] == base["metadata"]["name"]
    assert patch["metadata"]["namespace"] == base["metadata"]["namespace"]


@pytest.mark.parametrize("path", JSON_FILES, ids=_rel)
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_index_template_maps_the_record() -> None:
    template = json.loads((EXAMPLES / "full-elastic-stack" / "index-template.json").read_text())
    assert template["index_patterns"] == ["kube-audit-rest*"]
    assert "data_stream" in template  # Filebeat's output index is a data stream
    mappings = template["template"]["mappings"]
    assert mappings["dynamic"] is False  # no mapping explosion from arbitrary objects
    props = mappings["properties"]
    assert props["@timestamp"]["type"] == "date_nanos"
    assert props["requestReceivedTimestamp"]["type"] == "date_nanos"
    request = props["request"]["properties"]
    for field in ("uid", "operation", "name", "namespace", "subResource"):
        assert request[field]["type"] == "keyword", field
    assert request["userInfo"]["properties"]["username"]["type"] == "keyword"
    assert request["kind"]["properties"]["kind"]["type"] == "keyword"
    assert request["object"]["type"] == request["oldObject"]["type"] == "flattened"
    allowed = {"keyword", "date_nanos", "boolean", "flattened"}

    def types(node: dict[str, Any]) -> set[str]:
        found = set()
        for value in node.values():
            if "type" in value:
                found.add(value["type"])
            if "properties" in value:
                found |= types(value["properties"])
        return found

    assert types(props) <= allowed


def test_sample_requests_are_admission_reviews() -> None:
    lines = (EXAMPLES / "seeing-audit-log-locally" / "sample-requests.jsonl").read_bytes()
    reviews = [json.loads(line) for line in lines.splitlines()]
    assert len(reviews) >= 5
    uids = [r["request"]["uid"] for r in reviews]
    assert len(set(uids)) == len(uids)
    assert {r["request"]["operation"] for r in reviews} == {"CREATE", "UPDATE", "DELETE", "CONNECT"}
    assert all(r["kind"] == "AdmissionReview" for r in reviews)


# ---- the overlays, built --------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each kustomization under examples/, built on a copy of k8s/ with a fresh certificate."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "k8s", root / "k8s", ignore=shutil.ignore_patterns("tls"))
    created = run_cli("certs", f"--out-dir={root / 'k8s' / 'tls'}")
    assert created.returncode == 0, created.stderr
    shutil.copytree(EXAMPLES, root / "examples")
    return {
        k.parent.name: [_unwrap_base64(o) for o in kustomize(root / k.parent.relative_to(REPO))]
        for k in KUSTOMIZATIONS
    }


def _unwrap_base64(obj: dict[str, Any]) -> dict[str, Any]:
    """kustomize wraps base64 at 70 columns; the API server's decoder skips the
    line breaks, the client's models do not: validate the unwrapped form."""
    if obj["kind"] == "Secret":
        obj["data"] = {k: v.replace("\n", "") for k, v in obj["data"].items()}
    for webhook in obj.get("webhooks", []):
        webhook["clientConfig"]["caBundle"] = webhook["clientConfig"]["caBundle"].replace("\n", "")
    return obj


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return deployment


@pytest.mark.parametrize("example", [k.parent.name for k in KUSTOMIZATIONS])
def test_overlay_builds_into_valid_objects(
    built: dict[str, list[dict[str, Any]]], example: str
) -> None:
    objects = built[example]
    kinds = [o["kind"] for o in objects]
    assert "ValidatingWebhookConfiguration" in kinds and "ConfigMap" in kinds
    for obj in objects:
        check_object(obj)


@pytest.mark.parametrize("shipper", sorted(SHIPPERS))
def test_sidecar_reads_the_log_volume_and_keeps_the_restrictions(
    built: dict[str, list[dict[str, Any]]], shipper: str
) -> None:
    example, _config = SHIPPERS[shipper]
    pod = _deployment(built[example])["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"kube-audit-rest", shipper}
    sidecar = containers[shipper]
    logs = [m for m in sidecar["volumeMounts"] if m["name"] == "logs"]
    assert logs == [{"name": "logs", "mountPath": LOG_DIR, "readOnly": True}]
    context = sidecar["securityContext"]
    assert context["runAsUser"] == UID  # the log files are 0600, owned by this UID
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "limits" in sidecar["resources"] and "requests" in sidecar["resources"]
    # Every volume the sidecar mounts exists, and the only writable ones are emptyDirs.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in sidecar["volumeMounts"]:
        assert mount["name"] in volumes
        if not mount.get("readOnly"):
            assert "emptyDir" in volumes[mount["name"]], mount
    # The generated ConfigMap (name with a hash suffix) is the one mounted.
    config_maps = {o["metadata"]["name"] for o in built[example] if o["kind"] == "ConfigMap"}
    mounted = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert mounted <= config_maps


# ---- shipper configuration files --------------------------------------------------


def _under_log_dir(pattern: str) -> bool:
    return pattern.startswith(LOG_DIR + "/") and pattern.endswith(".log")


def test_filebeat_config() -> None:
    config = yaml.safe_load((EXAMPLES / "full-elastic-stack" / "filebeat.yml").read_text())
    (source,) = config["filebeat.inputs"]
    assert source["type"] == "filestream" and source["id"]
    assert all(_under_log_dir(p) for p in source["paths"])
    assert any("ndjson" in parser for parser in source["parsers"])
    output = config["output.elasticsearch"]
    assert all(host.startswith("https://") for host in output["hosts"])
    assert output["index"] == "kube-audit-rest"  # matches index-template.json
    assert output["password"] == "${ES_PASSWORD}"  # from the Secret, not in the file
    processors = {next(iter(p)) for p in config["processors"]}
    assert {"timestamp", "copy_fields"} <= processors
    assert config["setup.template.enabled"] is False


def test_filebeat_mounts_match_its_config(built: dict[str, list[dict[str, Any]]]) -> None:
    config = yaml.safe_load((EXAMPLES / "full-elastic-stack" / "filebeat.yml").read_text())
    pod = _deployment(built["full-elastic-stack"])["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "filebeat"]
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    (ca,) = config["output.elasticsearch"]["ssl.certificate_authorities"]
    assert str(Path(ca).parent) in mounts
    assert sidecar["args"][-1] == "/etc/filebeat/filebeat.yml" and "/etc/filebeat" in mounts


def _vector() -> dict[str, Any]:
    return tomllib.loads((EXAMPLES / "vector-to-siem" / "vector.toml").read_text())


def test_vector_config_is_a_connected_pipeline() -> None:
    config = _vector()
    components = {**config["sources"], **config.get("transforms", {}), **config["sinks"]}
    for name, component in {**config.get("transforms", {}), **config["sinks"]}.items():
        assert component["inputs"], name
        assert all(i in components for i in component["inputs"]), name
    (source,) = config["sources"].values()
    assert source["type"] == "file"
    assert all(_under_log_dir(p) for p in source["include"])
    assert source["max_line_bytes"] > MAX_REQUEST_BYTES  # big records are not dropped
    assert config["sinks"]["siem"]["inputs"] == ["records"]  # only redacted events leave
    assert config["sinks"]["siem"]["default_token"] == "${SPLUNK_HEC_TOKEN}"
    assert config["api"]["address"].startswith("127.0.0.1:")
    assert '"<redacted>"' in config["transforms"]["records"]["source"]


def test_vector_variables_are_all_provided(built: dict[str, list[dict[str, Any]]]) -> None:
    text = (EXAMPLES / "vector-to-siem" / "vector.toml").read_text()
    wanted = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    settings = {}
    for line in (EXAMPLES / "vector-to-siem" / "settings.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key and value, line
            settings[key] = value
    pod = _deployment(built["vector-to-siem"])["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "vector"]
    provided = set(settings) | {e["name"] for e in sidecar.get("env", [])}
    assert wanted <= provided, wanted - provided
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    assert _vector()["data_dir"] in mounts


# ---- the guides ----------------------------------------------------------------------


@pytest.mark.parametrize("readme", READMES, ids=_rel)
def test_guide_paths_exist(readme: Path) -> None:
    text = readme.read_text()
    for target in re.findall(r"\]\(([^)#:]+)\)", text):  # relative links
        assert (readme.parent / target).exists(), f"{_rel(readme)} links to missing {target}"
    for path in set(re.findall(r"(?<![\w/.-])(?:examples|k8s)/[\w./-]+", text)):
        path = path.rstrip(".")
        if path.startswith("k8s/tls"):
            continue  # created by the guide
        assert (REPO / path).exists(), f"{_rel(readme)} mentions missing {path}"


def _sh_blocks(readme: Path) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", readme.read_text(), re.S)


def _wait_ready(process: subprocess.Popen[bytes], metrics_port: int, stderr: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, stderr.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"not ready:\n{stderr.read_text()}")


@pytest.mark.timeout(120)
def test_local_guide_works_as_written(tmp_path: Path) -> None:
    """Steps 1 to 4 of seeing-audit-log-locally, in a scratch folder: the guide's
    server command (plus free ports), its curl loop (with that port), its jq queries."""
    for tool in ("jq", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install -y {tool})")
    guide = EXAMPLES / "seeing-audit-log-locally"
    blocks = _sh_blocks(guide / "README.md")
    (start_line,) = [
        line for b in blocks for line in b.splitlines() if "kube-audit-rest --self-signed" in line
    ]
    (loop,) = [b for b in blocks if b.startswith("while ")]
    port, metrics_port = free_port(), free_port()
    argv = shlex.split(start_line.replace("$PWD", str(tmp_path)))
    assert argv[0] == ".venv/bin/kube-audit-rest"
    argv[0] = CLI
    argv += [f"--server-port={port}", f"--metrics-port={metrics_port}", "--workers=1"]
    stderr = tmp_path / "server.err"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_ready(process, metrics_port, stderr)
        script = loop.replace("localhost:9090", f"localhost:{port}").replace(
            "examples/seeing-audit-log-locally/", f"{guide}/"
        )
        sent = subprocess.run(
            ["/bin/bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        answers = [json.loads(line) for line in sent.stdout.splitlines() if line]
        samples = (guide / "sample-requests.jsonl").read_bytes().splitlines()
        assert len(answers) == len(samples)
        assert all(a["response"]["allowed"] is True for a in answers)
    finally:
        process.terminate()
        process.wait(timeout=40)
    assert len((tmp_path / "audit.log").read_bytes().splitlines()) == len(samples)
    commands = [line for b in blocks for line in b.splitlines() if line.startswith("jq ")]
    assert len(commands) >= 7
    for command in commands:
        result = subprocess.run(
            shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.strip(), f"no output from: {command}"
