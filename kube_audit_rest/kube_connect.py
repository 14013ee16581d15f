"""Find the cluster the way kubectl does, and build a client for it.

Order: ``--kubeconfig FILE``; else the files listed in ``$KUBECONFIG``
(colon-separated, merged, missing ones skipped); else ``~/.kube/config``;
else, inside a pod, the service account (in-cluster config). ``--context``
picks a context of the kubeconfig instead of its ``current-context``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kube_audit_rest.kube_apply import KubeError

# Where the kubelet mounts a pod's service account (token and the API server's CA).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def kubeconfig_source(flag: str | None, environ: Mapping[str, str], home: str) -> str | None:
    """The kubeconfig path(s) kubectl would read, or None for in-cluster."""
    if flag:
        if not os.path.isfile(flag):
            raise KubeError(f"kubeconfig {flag} does not exist (--kubeconfig)")
        return flag
    listed = environ.get("KUBECONFIG", "")
    if listed:
        existing = [path for path in listed.split(os.pathsep) if path and os.path.isfile(path)]
        if existing:
            return os.pathsep.join(existing)
    else:
        default = os.path.join(home, ".kube", "config")
        if os.path.isfile(default):
            return default
    return None


def connect(kubeconfig: str | None, context: str | None) -> Any:
    """A ``kubernetes.client.ApiClient`` for the chosen cluster and context."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    source = kubeconfig_source(kubeconfig, os.environ, os.path.expanduser("~"))
    what = f"kubeconfig {source}"
    configuration = client.Configuration()
    try:
        if source is not None:
            load_kube_config: Any = config.load_kube_config
            load_kube_config(
                config_file=source,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(
            os.path.join(SERVICE_ACCOUNT_DIR, "token")
        ):
            if context:
                raise KubeError("--context needs a kubeconfig; none was found")
            from kubernetes.config import incluster_config

            what = f"in-cluster config ({SERVICE_ACCOUNT_DIR})"
            loader_class: Any = incluster_config.InClusterConfigLoader
            loader = loader_class(
                token_filename=os.path.join(SERVICE_ACCOUNT_DIR, "token"),
                cert_filename=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"),
            )
            loader.load_and_set(configuration)
        else:
            where = "$KUBECONFIG" if os.environ.get("KUBECONFIG") else "~/.kube/config"
            raise KubeError(f"no kubeconfig found (--kubeconfig, {where}) and not running in a pod")
    except ConfigException as error:
        raise KubeError(f"bad {what}: {' '.join(str(error).split())}") from None
    except (yaml.YAMLError, OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        # A file that is YAML but not a kubeconfig can surface as any of the last four.
        detail = " ".join(str(error).split()) or type(error).__name__
        raise KubeError(f"bad {what}: {detail}") from None
    # A failed connection is reported once, not after urllib3's three silent retries.
    configuration.retries = 1
    return client.ApiClient(configuration)
