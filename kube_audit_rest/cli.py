"""The ``kube-audit-rest`` command: check everything, then start the server.

Every check that can fail (flags, environment, certificate and key, the log
folder, the policy/redaction/HMAC key files, the metrics port) runs before
gunicorn binds the webhook port, and fails with one ``kube-audit-rest: error:
...`` line and exit status 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence

from kube_audit_rest.config import ConfigError, Settings, explicitly_set, fail, load_settings

SELF_SIGNED_DIR = "kube-audit-rest-tls"


def _in_child_process(work: Callable[[], object]) -> str | None:
    """Run *work* in a forked child and wait; its error message, or None.

    For one-off work that needs a heavy library: the master imports nothing it
    does not need, since every module it holds is resident in each process it
    forks later.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            work()
        except BaseException as error:
            os.write(write_end, (str(error) or type(error).__name__).encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return message or "the helper process failed"
    return None


def _create_self_signed(cert: str, key: str) -> None:
    from kube_audit_rest.certs import ensure_self_signed

    ensure_self_signed(cert, key)


def _prepare_self_signed(settings: Settings, argv: Sequence[str]) -> Settings:
    from dataclasses import replace

    cert, key = settings.cert_filename, settings.cert_key_filename
    if not (explicitly_set("cert_filename", argv) or explicitly_set("cert_key_filename", argv)):
        cert = os.path.join(SELF_SIGNED_DIR, "tls.crt")
        key = os.path.join(SELF_SIGNED_DIR, "tls.key")
    problem = _in_child_process(lambda: _create_self_signed(cert, key))
    if problem is not None:
        fail(f"cannot create a self-signed certificate: {problem}")
    return replace(
        settings, cert_filename=os.path.abspath(cert), cert_key_filename=os.path.abspath(key)
    )


def _check_certificate(settings: Settings) -> None:
    from kube_audit_rest.tls import CertificateError, build_context

    try:
        build_context(
            settings.cert_filename, settings.cert_key_filename, client_ca=settings.client_ca_file
        )
    except CertificateError as error:
        fail(str(error))


def _check_token_file(settings: Settings) -> None:
    if settings.webhook_token_file is None:
        return
    from kube_audit_rest.auth import TokenFileError, read_token

    try:
        read_token(settings.webhook_token_file)
    except TokenFileError as error:
        fail(f"--webhook-token-file: {error}")


def _check_log_file(settings: Settings) -> None:
    if settings.audit_to_std_log:
        return
    path = os.path.abspath(settings.logger_filename)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        fail(f"log folder {folder} does not exist (--logger-filename {settings.logger_filename})")
    if os.path.isdir(path):
        fail(f"--logger-filename {path} is a directory")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        fail(f"cannot open log file {path}: {error.strerror}")
    os.close(fd)


def _check_privacy(settings: Settings) -> None:
    from kube_audit_rest.config_files import ConfigFileError
    from kube_audit_rest.privacy_config import check_at_startup

    try:
        check_at_startup(settings)
    except ConfigFileError as error:
        fail(str(error))


def _log_privacy_warnings(settings: Settings) -> None:
    import structlog

    from kube_audit_rest import privacy_config

    log = structlog.get_logger("kube_audit_rest.privacy")
    if settings.no_redact_secrets:
        log.warning(
            "Secret redaction is OFF (--no-redact-secrets): Secret data is written in clear "
            "to the audit log; protect it like the Secrets themselves"
        )
    for warning in privacy_config.startup.warnings if privacy_config.startup else ():
        log.warning(warning)


def _check_ports(settings: Settings) -> None:
    if settings.server_port == settings.metrics_port:
        fail(f"--server-port and --metrics-port are both {settings.server_port}")


def serve(argv: Sequence[str]) -> int:
    try:
        settings = load_settings(argv)
    except ConfigError as error:
        fail(str(error))
    if settings.self_signed:
        settings = _prepare_self_signed(settings, argv)
    _check_ports(settings)
    _check_certificate(settings)
    _check_log_file(settings)
    _check_privacy(settings)
    _check_token_file(settings)

    runtime_dir = tempfile.mkdtemp(prefix="kube-audit-rest-")
    multiproc_dir = os.path.join(runtime_dir, "metrics")
    os.mkdir(multiproc_dir, 0o700)
    # prometheus_client chooses multiprocess mode when first imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    master = os.getpid()
    try:
        return _run(settings, runtime_dir)
    finally:
        # Workers are forked from here and leave through this frame too
        # (gunicorn ends them with sys.exit); only the master owns the folder.
        if os.getpid() == master:
            shutil.rmtree(runtime_dir, ignore_errors=True)


def _run(settings: Settings, runtime_dir: str) -> int:
    from kube_audit_rest.log import configure_logging
    from kube_audit_rest.metrics_process import bind_metrics_socket

    configure_logging(settings.verbosity)
    _log_privacy_warnings(settings)
    try:
        metrics_socket = bind_metrics_socket(settings.metrics_address, settings.metrics_port)
    except OSError as error:
        fail(f"cannot listen on metrics port {settings.metrics_port}: {error.strerror}")

    import structlog

    from kube_audit_rest.server import WebhookServer

    log = structlog.get_logger("kube_audit_rest")
    if settings.self_signed:
        log.info(
            "serving a self-signed certificate for localhost; try: "
            f"curl --cacert {settings.cert_filename} -H 'Content-Type: application/json' "
            f'-d \'{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
            f'"request":{{"uid":"try-1"}}}}\' https://localhost:{settings.server_port}/log-request',
            cert=settings.cert_filename,
        )
    WebhookServer(settings, runtime_dir, metrics_socket).run()
    return 0


# Subcommands, by name: the module whose ``main(argv) -> int`` runs it. Without
# a subcommand (or with flags first) the command serves the webhook, exactly as
# the Go original's binary does, so existing Deployment ``args`` keep working.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "certs": ("kube_audit_rest.certs_cli", "create a CA and a serving certificate for the Service"),
    "render": ("kube_audit_rest.render_cli", "print every manifest for kubectl apply -f -"),
    "install": ("kube_audit_rest.install_cli", "apply render's objects; the webhook once ready"),
    "uninstall": ("kube_audit_rest.uninstall_cli", "delete what install applied, webhook first"),
    "query": ("kube_audit_rest.query.cli", "search the log: who changed what, diffs, kubectl"),
    "ui": ("kube_audit_rest.ui.cli", "read-only web UI over an index of the log"),
}


def _usage_with_subcommands() -> str:
    lines = ["", "subcommands (kube-audit-rest SUBCOMMAND --help for their options):"]
    for name, (_module, summary) in sorted(SUBCOMMANDS.items()):
        lines.append(f"  {name:<12} {summary}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m kube_audit_rest``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        import importlib

        module = importlib.import_module(SUBCOMMANDS[args[0]][0])
        result: int = module.main(args[1:])
        return result
    if SUBCOMMANDS and any(arg in ("-h", "--help") for arg in args):
        from kube_audit_rest.config import build_parser

        build_parser().print_help()
        sys.stdout.write(_usage_with_subcommands())
        return 0
    return serve(args)
