"""Program logs: structlog, JSON lines on stderr (console lines with -v).

Everything goes through one pipeline: our own ``structlog`` calls, the standard
``logging`` records of libraries, and gunicorn's messages (``GunicornLogger``).
Request bodies are never passed to a logger: they can hold Secrets.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from gunicorn.glogging import Logger as _GunicornBaseLogger


def _json_dumps(event: Any, **_kw: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(verbose: bool) -> None:
    """Set up structlog and route the standard library's logging through it."""
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if verbose:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if not verbose:
        final.append(structlog.processors.format_exc_info)
    final.append(renderer)
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class GunicornLogger(_GunicornBaseLogger):  # type: ignore[misc]
    """gunicorn's logger, sending its messages into our pipeline.

    gunicorn normally installs its own plain-text handlers; here its error log
    propagates to the root logger configured above, and the per-request access
    log is off (one line per request would double the log volume of a busy
    webhook for no audit value: the record itself is the access log).
    """

    def setup(self, cfg: Any) -> None:
        self.error_log.handlers.clear()
        self.error_log.propagate = True
        self.error_log.setLevel(logging.getLogger().level)
        self.access_log.handlers.clear()
        self.access_log.propagate = False
        self.access_log.disabled = True

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None

    def reopen_files(self) -> None:
        return None

    def close_on_exec(self) -> None:
        return None
