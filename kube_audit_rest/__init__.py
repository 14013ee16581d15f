"""kube-audit-rest: an audit log for Kubernetes clusters from a validating admission webhook."""

__version__ = "0.1.0"
