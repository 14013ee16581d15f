"""The Dockerfile, checked without a Docker engine (none runs on these machines).

Statically: multi-stage, every COPY source exists and survives .dockerignore,
the runtime stage's USER, EXPOSE, ENV and ENTRYPOINT. Dynamically, the part
of the build that matters: a wheel built from this checkout and installed
into a fresh virtual environment (with its dependencies, from the package
index as the image build does) provides the console script the ENTRYPOINT
names, and it runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.k8s_support import load_yaml_stream

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        rules.append((negated, re.compile(f"^{regex}$")))
    return rules


def sent_to_build(relative: str) -> bool:
    """Whether Docker sends this path to the build: last matching rule wins, and
    a rule that matches a parent folder applies to everything inside it."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in _dockerignore_rules():
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(REPO / "Dockerfile")[1]


def _json_list(text: str) -> list[str]:
    import json

    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_multi_stage_on_python_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[-1].base == "python:3.11-slim"
    # The venv's interpreter path must exist in the runtime image: same base.
    assert {stage.base for stage in stages} == {"python:3.11-slim"}
    build = stages[0]
    assert build.name is not None
    assert any("pip wheel" in run for run in build.all("RUN"))


def test_every_copy_source_exists_and_reaches_the_build(stages: list[Stage]) -> None:
    names = {stage.name for stage in stages}
    copied = 0
    for stage in stages:
        for args in stage.all("COPY"):
            words = shlex.split(args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            sources = paths[:-1]
            source_stage = next(
                (f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None
            )
            if source_stage is not None:
                assert source_stage in names
                producer = next(s for s in stages if s.name == source_stage)
                for source in sources:
                    assert any(source in run for run in producer.all("RUN")), source
                continue
            for source in sources:
                path = REPO / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
                assert files, source
                for file in files:
                    relative = file.relative_to(REPO).as_posix()
                    assert sent_to_build(relative), f"{relative} is excluded by .dockerignore"
                copied += 1
    assert copied >= 2


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv/bin/python", ".git/config", "tests/test_render.py", "k8s/tls/tls.key"):
        assert not sent_to_build(path), path
    assert not sent_to_build("kube_audit_rest/__pycache__/cli.cpython-311.pyc")
    assert sent_to_build("kube_audit_rest/py.typed")


def test_runtime_stage_user_ports_environment_and_entrypoint(stages: list[Stage]) -> None:
    runtime = stages[-1]
    assert runtime.all("USER") == ["255999:255999"]
    exposed = {port for args in runtime.all("EXPOSE") for port in args.split()}
    assert exposed == {"9090", "55555"}
    env = " ".join(runtime.all("ENV"))
    assert "TMPDIR=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    (entrypoint,) = runtime.all("ENTRYPOINT")
    command = _json_list(entrypoint)  # exec form: signals reach the program
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(command) == 1
    program = Path(command[0])
    assert program.name in scripts
    assert scripts[program.name] == "kube_audit_rest.cli:main"
    # The venv the build stage creates is the one the runtime stage copies.
    venv = str(program.parent.parent)
    assert any(f"venv {venv}" in run for run in stages[0].all("RUN"))
    assert any(args.split()[-2:] == [venv, venv] for args in runtime.all("COPY"))


def test_image_matches_the_manifests(stages: list[Stage]) -> None:
    """k8s/ runs the image as the UID it declares, on the ports it exposes."""
    deployment = next(
        doc
        for doc in load_yaml_stream((REPO / "k8s" / "deployment.yaml").read_text())
        if doc["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {str(p["containerPort"]) for p in container["ports"]} == {"9090", "55555"}
    uid, gid = stages[-1].all("USER")[0].split(":")
    assert container["securityContext"]["runAsUser"] == int(uid)
    assert container["securityContext"]["runAsGroup"] == int(gid)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installed_in_a_fresh_venv_runs_the_entrypoint(
    tmp_path: Path, stages: list[Stage]
) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    # Build from exactly what the build stage copies, as the image build does.
    context = tmp_path / "context"
    for args in stages[0].all("COPY"):
        *sources, _destination = shlex.split(args)
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(
                    REPO / source,
                    context / source,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            else:
                context.mkdir(exist_ok=True)
                shutil.copy2(REPO / source, context / source)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("kube_audit_rest-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    script = venv / "bin" / "kube-audit-rest"  # what the ENTRYPOINT runs, in its venv
    assert script.is_file()

    helped = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert helped.returncode == 0, helped.stderr
    assert "--logger-filename" in helped.stdout and "render" in helped.stdout
    # The wheel's declared dependencies are enough for the subcommands too.
    rendered = subprocess.run(
        [str(script), "render"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert rendered.returncode == 0, rendered.stderr
    assert load_yaml_stream(rendered.stdout)[-1]["kind"] == "ValidatingWebhookConfiguration"
    # It imported the installed copy, not this checkout.
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import kube_audit_rest; print(kube_audit_rest.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=True,
    )
    assert where.stdout.startswith(str(venv))
