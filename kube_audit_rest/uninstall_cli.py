"""``kube-audit-rest uninstall``: see ``install_cli``, which holds both commands."""

from __future__ import annotations

from kube_audit_rest.install_cli import main_uninstall


def main(argv: list[str]) -> int:
    return main_uninstall(argv)
