# kube-audit-rest container image.
#
#   docker build -t kube-audit-rest:0.1.0 .
#
# Stage 1 builds the project's wheel and installs it with its dependencies
# into a virtual environment; stage 2 copies only that environment into a
# slim Python image. Both stages use the same base image, so the venv's
# interpreter path (/usr/local/bin/python3) exists in the runtime image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kube_audit_rest ./kube_audit_rest
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/kube-audit-rest \
 && /opt/kube-audit-rest/bin/pip install /wheels/*.whl \
 && /opt/kube-audit-rest/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kube-audit-rest" \
      org.opencontainers.image.description="Kubernetes audit log from a validating admission webhook" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written to the image at run time: byte code was compiled at
# install, the runtime directory goes to $TMPDIR, which must be a writable
# volume when the root file system is read-only (an emptyDir in k8s/,
# --tmpfs /tmp with docker run --read-only).
ENV PATH=/opt/kube-audit-rest/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
COPY --from=build /opt/kube-audit-rest /opt/kube-audit-rest
WORKDIR /tmp
# The Go original's UID and GID; no entry in /etc/passwd is needed.
USER 255999:255999
# 9090: the webhook (HTTPS); 55555: /metrics, /healthz, /readyz (HTTP).
EXPOSE 9090 55555
ENTRYPOINT ["/opt/kube-audit-rest/bin/kube-audit-rest"]
