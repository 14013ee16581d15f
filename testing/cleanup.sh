#!/usr/bin/env bash
# Undo testing/setup.sh: `kube-audit-rest uninstall` (the webhook configuration
# first, then the Deployment, Secret, Service and namespace), then the smoke
# test's namespaces.
#
# Usage: testing/cleanup.sh [uninstall options...]   e.g. --context=kind-dev
# Environment: KUBE_AUDIT_REST, the command (default: .venv/bin/kube-audit-rest, else PATH)
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cli=${KUBE_AUDIT_REST:-}
if [[ -z $cli ]]; then
  if [[ -x $repo/.venv/bin/kube-audit-rest ]]; then
    cli=$repo/.venv/bin/kube-audit-rest
  else
    cli=$(command -v kube-audit-rest) || {
      echo "cleanup: kube-audit-rest is not installed (pip install . or set KUBE_AUDIT_REST)" >&2
      exit 2
    }
  fi
fi

"$cli" uninstall "$@"

kubectl_args=()
for arg in "$@"; do
  case $arg in
    --context=* | --kubeconfig=*) kubectl_args+=("$arg") ;;
  esac
done
kubectl "${kubectl_args[@]}" delete namespace -l kube-audit-rest-smoke=true --ignore-not-found --wait=false
