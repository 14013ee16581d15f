"""gunicorn, embedded: one gthread worker serving the Flask app over plain HTTP.

Plain HTTP because the UI listens on 127.0.0.1 by default and is reached
through ``kubectl port-forward`` (an encrypted tunnel) or a reverse proxy.
"""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from kube_audit_rest.ui.cli import UiSettings

THREADS = 4


class UiServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: UiSettings, auth: Any) -> None:
        self.settings = settings
        self.auth = auth
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.address}]" if ":" in s.address else s.address
        options: dict[str, Any] = {
            "bind": [f"{host}:{s.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": THREADS,
            "timeout": 60,
            "graceful_timeout": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "kube-audit-rest-ui",
            "preload_app": False,
            "forwarded_allow_ips": "",
            "control_socket_disable": True,
            "limit_request_line": 8190,
            "when_ready": self._when_ready,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def _when_ready(self, _arbiter: Any) -> None:
        s = self.settings
        host = f"[{s.address}]" if ":" in s.address else s.address
        sys.stderr.write(f"kube-audit-rest ui: serving http://{host}:{s.port}/ ({s.describe})\n")
        sys.stderr.flush()

    def load(self) -> Any:
        from kube_audit_rest.ui import db
        from kube_audit_rest.ui.app import create_app

        engine = db.open_engine(self.settings.url)
        return create_app(engine, self.auth, self.settings.describe)
