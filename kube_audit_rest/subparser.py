"""argparse for subcommands: usage names the subcommand, errors are one line.

A bad option prints ``kube-audit-rest: error: ...`` and exits 2, like the
server's own flags (``config.fail``), never a usage dump.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from kube_audit_rest.config import fail


class SubcommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``kube-audit-rest: error:`` line."""

    def error(self, message: str) -> NoReturn:
        fail(message)
