"""``kube-audit-rest render``: every manifest as one YAML stream for ``kubectl apply -f -``."""

from __future__ import annotations

import os
import sys

from kube_audit_rest.config import fail
from kube_audit_rest.manifests import (
    add_render_arguments,
    build_manifests,
    options_from_args,
    tls_material,
    to_yaml,
)
from kube_audit_rest.subparser import SubcommandParser


def main(argv: list[str]) -> int:
    parser = SubcommandParser(
        prog="kube-audit-rest render",
        description="Print the Namespace, TLS Secret, Service, Deployment, PodDisruptionBudget, "
        "optional ServiceMonitor and ValidatingWebhookConfiguration (caBundle filled in) as one "
        "YAML stream, in apply order: kube-audit-rest render | kubectl apply -f -",
    )
    add_render_arguments(parser)
    options = options_from_args(parser.parse_args(argv))
    try:
        tls = tls_material(options)
    except ValueError as error:
        fail(str(error))
    if options.cert_dir is None:
        sys.stderr.write(
            f"kube-audit-rest: generated a new CA and a certificate for {options.service_host}; "
            "the CA key is not kept (use `kube-audit-rest certs` and --cert-dir to keep it)\n"
        )
    text = to_yaml(build_manifests(options, tls.ca_cert, tls.cert, tls.key))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`render | head`): not worth a traceback, but
        # not a success either. Point stdout at /dev/null so the interpreter's
        # final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        fail("stdout was closed before all manifests were written")
    return 0
