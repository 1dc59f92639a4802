"""Client API keys: resolved once at start from the manifest's references, kept only as digests.

A key is read from its environment variable or file when the gateway starts (or given as its
SHA-256 in the manifest); only ``sha256(key)`` is kept. ``authenticate`` hashes the bearer
token and compares it with every digest in constant time. No message or log line contains a
key; the key's manifest ``name`` stands for it everywhere (ledger, metrics, logs).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import Unauthorized
from serving.errors import ManifestError, ManifestIssue
from serving.manifest import ApiKey, Auth

log = logging.getLogger(__name__)

ANONYMOUS_NAME = "_anonymous"  # manifest names start with [a-z0-9], so this one cannot clash


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, with what it may use and its limits (``None``: no limit)."""

    name: str
    models: tuple[str, ...] = ("*",)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    token_quota: int | None = None

    @property
    def limited(self) -> bool:
        limits = (self.requests_per_minute, self.tokens_per_minute, self.token_quota)
        return any(limit is not None for limit in limits)

    def allows(self, model: str, variant: str) -> bool:
        """Whether a pattern (``*``, ``model``, ``model:*``, ``model:variant``) admits this."""
        for pattern in self.models:
            want_model, _, want_variant = pattern.partition(":")
            if want_model == "*" or (want_model == model and want_variant in ("", "*", variant)):
                return True
        return False


ANONYMOUS = Principal(ANONYMOUS_NAME)


class KeyRing:
    """The manifest's keys as digests. Without an ``auth`` block every request is ANONYMOUS."""

    def __init__(self, digests: Mapping[bytes, Principal], open_access: bool = False) -> None:
        self._digests = tuple(digests.items())
        self.open_access = open_access

    @classmethod
    def from_auth(cls, auth: Auth | None, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Resolve every key now; raise ManifestError naming each key that cannot be read."""
        if auth is None:
            log.warning("no auth block in the manifest: the API is open to any client")
            return cls({}, open_access=True)
        env = os.environ if environ is None else environ
        digests: dict[bytes, Principal] = {}
        issues = []
        for i, key in enumerate(auth.keys):
            try:
                digest = _digest_of(key, env)
            except _Unreadable as exc:
                issues.append(
                    ManifestIssue("manifest", None, f"auth.keys.{i}.{exc.field}", str(exc))
                )
                continue
            if digest in digests:
                issues.append(
                    ManifestIssue(
                        "manifest",
                        None,
                        f"auth.keys.{i}",
                        f"key {key.name!r} is the same key as {digests[digest].name!r}",
                    )
                )
            digests[digest] = _principal(key)
        if issues:
            raise ManifestError(issues)
        log.info("API keys loaded: %s", ", ".join(p.name for p in digests.values()))
        return cls(digests)

    def replace(self, other: KeyRing) -> None:
        """Take ``other``'s keys (a reloaded manifest): every holder of this ring sees them."""
        self._digests, self.open_access = other._digests, other.open_access

    @property
    def names(self) -> list[str]:
        return [principal.name for _, principal in self._digests]

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <key>`` header; raise Unauthorized."""
        if self.open_access:
            return ANONYMOUS
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, principal in self._digests:  # compare with all: no early exit
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found


class _Unreadable(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def _digest_of(key: ApiKey, env: Mapping[str, str]) -> bytes:
    if key.key_sha256 is not None:
        return bytes.fromhex(key.key_sha256)
    if key.key_env is not None:
        secret = env.get(key.key_env, "").strip()
        if not secret:
            raise _Unreadable("key_env", f"environment variable {key.key_env} is not set or empty")
    else:
        secret = _read_key_file(key.key_file)
    return hashlib.sha256(secret.encode()).digest()


def _read_key_file(path: Path | None) -> str:
    assert path is not None  # the manifest guarantees one source
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _Unreadable("key_file", f"{path}: {exc.strerror or exc}") from None
    if not secret or "\n" in secret:
        raise _Unreadable("key_file", f"{path}: must hold the key on one line")
    if path.stat().st_mode & 0o004:
        log.warning("key file %s of the manifest is readable by every user", path)
    return secret


def _principal(key: ApiKey) -> Principal:
    return Principal(
        key.name,
        key.models,
        key.requests_per_minute,
        key.tokens_per_minute,
        key.token_quota,
    )
