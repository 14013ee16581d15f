#!/usr/bin/env bash
# Install kube-audit-rest on a real cluster for testing (the current kubectl
# context, or --context/--kubeconfig passed through), then prove that it
# records: create a throw-away namespace and ConfigMap and find them in the
# audit log of a pod. Built on `kube-audit-rest install`, which generates the
# certificates, applies the manifests, waits for the Deployment and only then
# registers the webhook. testing/cleanup.sh undoes it.
#
# Usage: testing/setup.sh [install options...]   e.g. --replicas=1 --context=kind-dev
# Environment:
#   IMAGE           image to run (default kube-audit-rest:dev-<git commit>)
#   BUILD_IMAGE=1   build IMAGE from the Dockerfile with docker first
#   KIND_CLUSTER    load IMAGE into this kind cluster (kind load docker-image)
#   KUBE_AUDIT_REST the command (default: .venv/bin/kube-audit-rest, else PATH)
# Needs kubectl for the smoke test; docker and kind only when asked for.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cli=${KUBE_AUDIT_REST:-}
if [[ -z $cli ]]; then
  if [[ -x $repo/.venv/bin/kube-audit-rest ]]; then
    cli=$repo/.venv/bin/kube-audit-rest
  else
    cli=$(command -v kube-audit-rest) || {
      echo "setup: kube-audit-rest is not installed (pip install . or set KUBE_AUDIT_REST)" >&2
      exit 2
    }
  fi
fi
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo local)
image=${IMAGE:-kube-audit-rest:dev-$commit}

if [[ ${BUILD_IMAGE:-0} == 1 ]]; then
  docker build -t "$image" "$repo"
fi
if [[ -n ${KIND_CLUSTER:-} ]]; then
  kind load docker-image "$image" --name "$KIND_CLUSTER"
fi

"$cli" install --image "$image" --wait-timeout 300 "$@"

# kubectl options for the smoke test: the same --context/--kubeconfig, if given.
kubectl_args=()
namespace=kube-audit-rest
for arg in "$@"; do
  case $arg in
    --context=* | --kubeconfig=*) kubectl_args+=("$arg") ;;
    --namespace=*) namespace=${arg#--namespace=} ;;
  esac
done

smoke=kube-audit-rest-smoke-$(date +%s)
kubectl "${kubectl_args[@]}" create namespace "$smoke"
kubectl "${kubectl_args[@]}" label namespace "$smoke" kube-audit-rest-smoke=true
kubectl "${kubectl_args[@]}" -n "$smoke" create configmap smoke-test --from-literal=hello=world

echo "setup: looking for the ConfigMap in the audit log (up to 30 s)"
for _ in $(seq 1 30); do
  for pod in $(kubectl "${kubectl_args[@]}" -n "$namespace" get pods \
    -l app.kubernetes.io/name=kube-audit-rest -o name); do
    if kubectl "${kubectl_args[@]}" -n "$namespace" exec "$pod" -c kube-audit-rest -- \
      grep -q "\"namespace\":\"$smoke\"" /var/log/kube-audit-rest/kube-audit-rest.log 2>/dev/null; then
      echo "setup: $pod recorded the changes in namespace $smoke: kube-audit-rest works"
      exit 0
    fi
  done
  sleep 1
done
echo "setup: no pod recorded the changes in namespace $smoke within 30 s" >&2
exit 1
