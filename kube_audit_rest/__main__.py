"""Allow ``python -m kube_audit_rest``."""

from kube_audit_rest.cli import main

raise SystemExit(main())
