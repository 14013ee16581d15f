"""The privacy settings in force: policy, redaction rules, HMAC key, and their reload.

``load()`` reads the files named by the flags into an immutable
``PrivacyConfig``. ``ConfigStore`` holds the one in force for a worker and
replaces it when the files change on disk (a ``stat`` signature compared every
``--config-reload-interval`` seconds, so a ConfigMap's ``..data`` symlink swap
is seen) or when the worker gets SIGHUP. A new version that does not load is
logged and counted, and the previous one stays in force.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from kube_audit_rest.config import Settings
from kube_audit_rest.config_files import ConfigFileError, FileSignature, signature
from kube_audit_rest.policy import Policy, load_policy
from kube_audit_rest.redaction import Redactor, build_redactor, load_hmac_key, load_rules

_log = structlog.get_logger("kube_audit_rest.privacy")


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    policy: Policy | None
    redactor: Redactor
    drop_dry_run: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the privacy configuration comes from (the flags)."""

    policy_file: str = ""
    redaction_file: str = ""
    hmac_key_file: str = ""
    redact_secrets: bool = True
    drop_dry_run: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Sources:
        return cls(
            settings.policy_file or "",
            settings.redaction_file or "",
            settings.redact_hmac_key_file or "",
            not settings.no_redact_secrets,
            settings.drop_dry_run,
        )

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.policy_file, self.redaction_file, self.hmac_key_file) if p)

    def load(self) -> PrivacyConfig:
        """Read every file; ConfigFileError (one line) for the first problem found."""
        policy = load_policy(self.policy_file) if self.policy_file else None
        custom = load_rules(self.redaction_file) if self.redaction_file else {}
        key = load_hmac_key(self.hmac_key_file) if self.hmac_key_file else None
        warnings = policy.warnings if policy else ()
        return PrivacyConfig(
            policy, build_redactor(self.redact_secrets, custom, key), self.drop_dry_run, warnings
        )


# What the master loaded and checked at start-up; forked workers inherit it and
# fall back to it if the files are broken when they start.
startup: PrivacyConfig | None = None


def check_at_startup(settings: Settings) -> PrivacyConfig:
    """Load the configuration in the master; ConfigFileError stops the start."""
    global startup
    startup = Sources.from_settings(settings).load()
    return startup


class ConfigStore:
    """The configuration in force for one worker, reloaded on change or on request."""

    def __init__(
        self,
        sources: Sources,
        reload_failed: Callable[[], None] = lambda: None,
        fallback: PrivacyConfig | None = None,
    ) -> None:
        self._sources = sources
        self._reload_failed = reload_failed
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._forced = False
        self._signature: FileSignature = signature(sources.paths)
        self._rejected: FileSignature | None = None
        try:
            self.current = sources.load()
        except ConfigFileError as error:
            if fallback is None:
                raise
            # A worker replaced while the files are broken keeps serving
            # instead of failing to boot (which would stop the whole server).
            self.current = fallback
            self._rejected = self._signature
            self._report(str(error), "using the configuration checked at start-up")

    @property
    def watched(self) -> bool:
        """Whether there are files to watch at all."""
        return bool(self._sources.paths)

    def _report(self, error: str, outcome: str) -> None:
        self._reload_failed()
        _log.error(f"privacy configuration reload failed; {outcome}", error=error, pid=os.getpid())

    def refresh(self, force: bool = False) -> bool:
        """Load the files again if they changed (or if *force*); return whether replaced."""
        with self._lock:
            current = signature(self._sources.paths)
            if not force and current in (self._signature, self._rejected):
                return False
            try:
                config = self._sources.load()
            except ConfigFileError as error:
                self._rejected = current
                self._report(str(error), "keeping the previous one")
                return False
            self.current = config
            self._signature = current
            self._rejected = None
        _log.info("privacy configuration loaded", files=list(self._sources.paths), pid=os.getpid())
        for warning in config.warnings:
            _log.warning(warning)
        return True

    def request_reload(self) -> None:
        """Ask the watcher for a forced reload; safe to call from a signal handler."""
        self._forced = True
        self._wake.set()

    def watch(self, interval: float) -> threading.Thread:
        """Check every *interval* seconds, and at once after ``request_reload``."""

        def loop() -> None:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                forced, self._forced = self._forced, False
                try:
                    self.refresh(force=forced)
                except Exception:  # never let the watcher die silently
                    _log.exception("privacy configuration watcher error")

        thread = threading.Thread(target=loop, name="privacy-config-watcher", daemon=True)
        thread.start()
        return thread
