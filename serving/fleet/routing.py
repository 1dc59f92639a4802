"""What routing reads of a request: the hints a model's affinity policy turns into the key
that keeps related requests on one replica (``routing.affinity``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PREFIX_CHARS = 256  # affinity "prefix": the first characters of the prompt (prefix caching)


@dataclass(frozen=True)
class RequestHints:
    user: str | None = None  # the body's ``user``
    session: str | None = None  # the ``x-session-id`` header
    prompt: str = ""  # messages or prompt, as text

    @classmethod
    def of(cls, data: dict[str, Any], session: str | None) -> RequestHints:
        user = data.get("user")
        prompt = data.get("messages") or data.get("prompt") or ""
        return cls(user if isinstance(user, str) else None, session, str(prompt)[:PREFIX_CHARS])


def affinity_key(mode: str, hints: RequestHints | None) -> str | None:
    """The key for the model's affinity ``mode``: none, user, header (session) or prefix."""
    if hints is None:
        return None
    if mode == "header":
        return hints.session
    if mode == "user":
        return hints.user
    if mode == "prefix":
        return hints.prompt
    return None
