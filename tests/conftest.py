"""Fixtures that start the real server: the CLI, gunicorn, TLS, files on disk."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Pair, Server, make_pair, start_server

StartServer = Callable[..., Server]


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path / "certs")


@pytest.fixture
def start(tmp_path: Path, pair: Pair) -> Iterator[StartServer]:
    """Start servers for a test; each is stopped (SIGTERM) when the test ends."""
    servers: list[Server] = []

    def _start(*args: str, **kwargs: Any) -> Server:
        kwargs.setdefault("pair", pair)
        server = start_server(tmp_path, args=args, **kwargs)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.stop()
        if server.process.poll() is None:
            server.process.kill()


@pytest.fixture
def server(start: StartServer) -> Server:
    """A server with two workers and default settings otherwise."""
    return start("--workers=2")
