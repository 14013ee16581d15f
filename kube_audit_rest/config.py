"""Settings: one table drives the command line, the environment and the README.

Each ``Option`` is a record (flag, type, default, help). Precedence is
defaults < environment (``KUBE_AUDIT_REST_<NAME>``) < command line, as in
gunicorn's ``load_config``. The Go original's flags keep their names and
defaults, so an existing Deployment's ``args`` work unchanged.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

ENV_PREFIX = "KUBE_AUDIT_REST_"
MEBIBYTE = 1024 * 1024
# lumberjack treats a MaxSize of 0 as its 100 MB default.
LUMBERJACK_DEFAULT_MAX_MB = 100


class ConfigError(ValueError):
    """A setting is unusable; the message is one line a user can act on."""


def _cpu_count() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a TCP port between 1 and 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a positive number of seconds, got {text!r}")
    return value


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


# A cluster name (--cluster-name, /audit-webhook/<cluster>): DNS-label-like.
CLUSTER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")
OUTPUT_FORMATS = ("admission-review", "audit-event")


def _cluster_name(text: str) -> str:
    if not CLUSTER_NAME.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a cluster name: 1 to 63 lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit"
        )
    return text


def _output_format(text: str) -> str:
    if text not in OUTPUT_FORMATS:
        raise ValueError(f"must be one of {', '.join(OUTPUT_FORMATS)}, got {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: where it comes from, how it is parsed, what it means."""

    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    go_compatible: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_bool(self) -> bool:
        return self.parse is _parse_bool


OPTIONS: tuple[Option, ...] = (
    Option(
        "logger_filename",
        ("--logger-filename",),
        _non_empty,
        "/tmp/kube-audit-rest.log",  # noqa: S108 - the Go original's default
        "File the audit records are appended to.",
        True,
    ),
    Option(
        "audit_to_std_log",
        ("--audit-to-std-log",),
        _parse_bool,
        False,
        "Write audit records to stdout instead of the file.",
        True,
    ),
    Option(
        "logger_max_size",
        ("--logger-max-size",),
        _non_negative_int,
        500,
        "Rotate the file before it grows past this many MB (MiB); 0 means 100.",
        True,
    ),
    Option(
        "logger_max_backups",
        ("--logger-max-backups",),
        _non_negative_int,
        1,
        "Rotated files to keep; 0 keeps all.",
        True,
    ),
    Option(
        "cert_filename",
        ("--cert-filename",),
        _non_empty,
        "/etc/tls/tls.crt",
        "PEM certificate (chain) served on the webhook port; reloaded when it changes.",
        True,
    ),
    Option(
        "cert_key_filename",
        ("--cert-key-filename",),
        _non_empty,
        "/etc/tls/tls.key",
        "PEM private key of that certificate.",
        True,
    ),
    Option("server_port", ("--server-port",), _port, 9090, "HTTPS port of the webhook.", True),
    Option(
        "metrics_port",
        ("--metrics-port",),
        _port,
        55555,
        "Plain HTTP port for /metrics, /healthz and /readyz.",
        True,
    ),
    Option(
        "verbosity",
        ("-v", "--verbosity"),
        _parse_bool,
        False,
        "Debug logging, as readable console lines instead of JSON.",
        True,
    ),
    Option(
        "workers",
        ("--workers",),
        _positive_int,
        None,
        "Worker processes; default one per CPU available (affinity and cgroup quota).",
    ),
    Option(
        "threads",
        ("--threads",),
        _positive_int,
        4,
        "Accepted for compatibility with earlier versions; no effect (each worker is one "
        "event loop).",
    ),
    Option(
        "max_connections",
        ("--max-connections",),
        _positive_int,
        1000,
        "Open connections per worker; further clients wait in the listen backlog.",
    ),
    Option(
        "server_address",
        ("--server-address",),
        _non_empty,
        "0.0.0.0",
        "Address the webhook port binds to.",
    ),
    Option(
        "metrics_address",
        ("--metrics-address",),
        _non_empty,
        "0.0.0.0",
        "Address the metrics port binds to.",
    ),
    Option(
        "max_request_bytes",
        ("--max-request-bytes",),
        _positive_int,
        16 * MEBIBYTE,
        "Largest accepted request body in bytes; larger bodies get 413 unread.",
    ),
    Option(
        "handshake_timeout",
        ("--handshake-timeout",),
        _seconds,
        5.0,
        "Seconds a client has to complete the TLS handshake.",
    ),
    Option(
        "read_timeout",
        ("--read-timeout",),
        _seconds,
        5.0,
        "Seconds a client has to send a whole request (headers and body).",
    ),
    Option(
        "write_timeout",
        ("--write-timeout",),
        _seconds,
        10.0,
        "Seconds a response may take to be sent.",
    ),
    Option(
        "idle_timeout",
        ("--idle-timeout",),
        _seconds,
        15.0,
        "Seconds an idle kept-alive connection stays open.",
    ),
    Option(
        "graceful_timeout",
        ("--graceful-timeout",),
        _seconds,
        25.0,
        "Seconds in-flight requests get to finish on SIGTERM/SIGINT.",
    ),
    Option(
        "cert_reload_interval",
        ("--cert-reload-interval",),
        _seconds,
        10.0,
        "Seconds between checks of the certificate files for changes.",
    ),
    Option(
        "self_signed",
        ("--self-signed",),
        _parse_bool,
        False,
        "Try-it mode: serve a self-signed certificate for localhost, created in "
        "./kube-audit-rest-tls/ (or at the cert paths given) if missing.",
    ),
    Option(
        "policy_file",
        ("--policy-file",),
        str,
        None,
        "kube-apiserver audit Policy (audit.k8s.io/v1, YAML or JSON) applied to the records; "
        "none: keep everything.",
    ),
    Option(
        "redaction_file",
        ("--redaction-file",),
        str,
        None,
        "YAML list of {group, resource, paths} whose values are redacted, besides Secrets.",
    ),
    Option(
        "redact_hmac_key_file",
        ("--redact-hmac-key-file",),
        str,
        None,
        "File whose bytes key an HMAC-SHA256 of each redacted value, written in its marker.",
    ),
    Option(
        "no_redact_secrets",
        ("--no-redact-secrets",),
        _parse_bool,
        False,
        "Write Secret data in clear (Secrets are redacted by default).",
    ),
    Option(
        "drop_dry_run",
        ("--drop-dry-run",),
        _parse_bool,
        False,
        "Drop the records of dry-run requests.",
    ),
    Option(
        "config_reload_interval",
        ("--config-reload-interval",),
        _seconds,
        10.0,
        "Seconds between checks of the policy, redaction, HMAC key and token files for changes.",
    ),
    Option(
        "output_format",
        ("--output-format",),
        _output_format,
        "admission-review",
        "Lines for /log-request: admission-review (the request as received) or audit-event "
        "(an audit.k8s.io/v1 Event).",
    ),
    Option(
        "cluster_name",
        ("--cluster-name",),
        _cluster_name,
        None,
        "Add a top-level cluster member with this name to every record.",
    ),
    Option(
        "webhook_token_file",
        ("--webhook-token-file",),
        _non_empty,
        None,
        "File holding the bearer token every webhook request must carry (or a client "
        "certificate, with --client-ca-file); re-read when it changes.",
    ),
    Option(
        "client_ca_file",
        ("--client-ca-file",),
        _non_empty,
        None,
        "PEM CA bundle: webhook requests with a client certificate it verifies are "
        "authenticated (mTLS).",
    ),
)

_OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings for one run."""

    logger_filename: str
    audit_to_std_log: bool
    logger_max_size: int
    logger_max_backups: int
    cert_filename: str
    cert_key_filename: str
    server_port: int
    metrics_port: int
    verbosity: bool
    workers: int
    threads: int
    max_connections: int
    server_address: str
    metrics_address: str
    max_request_bytes: int
    handshake_timeout: float
    read_timeout: float
    write_timeout: float
    idle_timeout: float
    graceful_timeout: float
    cert_reload_interval: float
    self_signed: bool
    policy_file: str | None
    redaction_file: str | None
    redact_hmac_key_file: str | None
    no_redact_secrets: bool
    drop_dry_run: bool
    config_reload_interval: float
    output_format: str
    cluster_name: str | None
    webhook_token_file: str | None
    client_ca_file: str | None

    @property
    def max_file_bytes(self) -> int:
        megabytes = self.logger_max_size or LUMBERJACK_DEFAULT_MAX_MB
        return megabytes * MEBIBYTE


assert {f.name for f in fields(Settings)} == set(_OPTIONS_BY_NAME), "table and Settings differ"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _argument_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"invalid value for {option.flags[-1]}: {error}"
            ) from None

    convert.__name__ = option.name
    return convert


def build_parser(prog: str = "kube-audit-rest") -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        description="Record every Kubernetes AdmissionReview sent to this webhook as a JSON line.",
        argument_default=argparse.SUPPRESS,
    )
    for option in OPTIONS:
        if option.is_bool:
            # `--flag` alone means true (as in the Go original); `--flag=false` also works.
            parser.add_argument(
                *option.flags,
                dest=option.name,
                nargs="?",
                const=True,
                type=_argument_type(option),
                metavar="BOOL",
                help=option.help,
            )
        else:
            parser.add_argument(
                *option.flags,
                dest=option.name,
                type=_argument_type(option),
                metavar=option.name.split("_")[-1].upper(),
                help=option.help,
            )
    return parser


def _from_environment(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None:
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            raise ConfigError(f"invalid value in ${option.env}: {error}") from None
    return values


def load_settings(argv: Sequence[str], environ: dict[str, str] | None = None) -> Settings:
    """Parse settings; argparse exits on bad flags, ConfigError covers the rest."""
    values: dict[str, Any] = {option.name: option.default for option in OPTIONS}
    values.update(_from_environment(dict(os.environ if environ is None else environ)))
    values.update(vars(build_parser().parse_args(list(argv))))
    if values["workers"] is None:
        values["workers"] = _cpu_count()
    return Settings(**values)


def explicitly_set(name: str, argv: Sequence[str], environ: dict[str, str] | None = None) -> bool:
    """Whether the user chose this setting (flag or environment), not the default."""
    option = _OPTIONS_BY_NAME[name]
    env = os.environ if environ is None else environ
    if option.env in env:
        return True
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in option.flags)


def fail(message: str) -> NoReturn:
    """Print one error line and exit 2, the way argparse does for bad flags."""
    sys.stderr.write(f"kube-audit-rest: error: {message}\n")
    raise SystemExit(2)
