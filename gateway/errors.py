"""Errors of the HTTP surface, and the one place every error becomes an OpenAI-style body.

The body is ``{"error": {"message", "type", "param", "code"}}`` as OpenAI and vLLM send it.
Besides serving's errors (see serving/errors.py), the gateway raises these; each class carries
its status, type, code and param, and ``error_response`` writes any of them:

QuantgateError
├── InvalidRequest        400 a malformed body or query parameter
├── Unauthorized          401 missing or invalid API key or admin key
├── Forbidden             403 the key may not use this model or variant
├── NotFound              404
│   (serving's ManifestError is 400 invalid_manifest, ReloadRefused 409 restart_needed,
│   JobFinished 409 job_already_finished)
├── PayloadTooLarge       413
├── RateLimited           429 requests/min, tokens/min (Retry-After) or token quota exhausted
├── LimiterUnavailable    503 the shared rate-limit store (Redis) cannot be reached
└── UpstreamError         502 the backend could not be reached or broke off
    └── GatewayTimeout    504 the backend did not answer within the gateway's timeouts

The web framework's own errors (404, 405, a refused admin body: 400) and unexpected ones (500)
get the same body (``http_error_response``, ``validation_error_response``,
``internal_error_response``); so do an upstream's (``upstream_error_body``).

Messages never contain an API key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response

from serving.errors import QuantgateError


class InvalidRequest(QuantgateError):
    status, type, code = 400, "invalid_request_error", "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class PayloadTooLarge(QuantgateError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class Unauthorized(QuantgateError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(QuantgateError):
    """The key is valid but may not use the model or variant it asked for."""

    status, type, code, param = 403, "permission_error", "model_not_allowed", "model"


class RateLimited(QuantgateError):
    """Over a limit: ``reason`` is ``requests``, ``tokens`` or ``quota``.

    ``retry_after_s`` is when the sliding window lets the next request in; ``None`` for an
    exhausted quota, which waiting does not refill.
    """

    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, message: str, reason: str, retry_after_s: int | None) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        quota = retry_after_s is None
        self.type = "insufficient_quota" if quota else "rate_limit_error"
        self.code = "insufficient_quota" if quota else "rate_limit_exceeded"
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class LimiterUnavailable(QuantgateError):
    """The rate-limit store failed; requests are refused rather than let through unmetered."""

    status, type, code = 503, "service_unavailable", "rate_limiter_unavailable"


class NotFound(QuantgateError):
    status, type, code = 404, "invalid_request_error", "not_found"


class UpstreamError(QuantgateError):
    """The backend could not be reached or broke off."""

    status, type, code = 502, "upstream_error", "upstream_unreachable"


class GatewayTimeout(UpstreamError):
    """The backend did not answer in time: slow, not known broken (neither retried elsewhere
    nor counted against its circuit)."""

    status, code = 504, "upstream_timeout"


def error_body(message: str, type_: str, code: str | int | None, param: str | None = None) -> bytes:
    err = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": err}).encode()


UPSTREAM_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def upstream_error_body(status: int, body: bytes) -> bytes:
    """An upstream's error answer in the OpenAI shape (the status is kept by the caller): its
    own message, param and code where it has them (vLLM names its exception class as the type
    and sends the status as an integer code; FastAPI sends ``{"detail": ...}``)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    message, param, code = _upstream_fields(data)
    if not message:
        message = body.decode("utf-8", "replace").strip()[:2000] or f"upstream answered {status}"
    type_ = UPSTREAM_TYPES.get(
        status, "invalid_request_error" if status < 500 else "upstream_error"
    )
    return error_body(message, type_, code, param)


def _upstream_fields(data: object) -> tuple[str | None, str | None, str | None]:
    if not isinstance(data, dict):
        return None, None, None
    err = data.get("error", data)
    if isinstance(err, str):
        return err, None, None
    if not isinstance(err, dict):
        return None, None, None
    found = err.get("message", err.get("detail"))
    message = found if isinstance(found, str) or found is None else json.dumps(found)
    param, code = err.get("param"), err.get("code")
    return (
        message,
        param if isinstance(param, str) else None,
        code if isinstance(code, str) else None,
    )


def error_response(exc: QuantgateError) -> Response:
    """Any of Quantgate's errors, as its class says it answers."""
    return Response(
        error_body(str(exc) + exc.details(), exc.type, exc.code, exc.param),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers(),
    )


def http_error_response(status: int, detail: object, headers: Mapping[str, str] | None) -> Response:
    """The web framework's own errors (no such route 404, wrong method 405) in the same shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, f"http_{status}")
    type_ = "invalid_request_error" if status < 500 else "internal_error"
    body = error_body(str(detail), type_, code)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def validation_error_response(errors: Sequence[Mapping[str, Any]]) -> Response:
    """A body or query the admin routes' models refuse: 400, each problem with where it is."""
    where = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors]
    msgs = [str(e.get("msg")) for e in errors]
    parts = [f"{w}: {m}" if w else m for w, m in zip(where, msgs, strict=True)]
    param = where[0] if where else None
    body = error_body("; ".join(parts), "invalid_request_error", "invalid_request", param)
    return Response(body, status_code=400, media_type="application/json")


def internal_error_response(exc: BaseException) -> Response:
    """An error no one meant (a bug): 500 in the same shape, never a plain-text page."""
    message = f"internal error ({type(exc).__name__}); the gateway's log has the details"
    body = error_body(message, "internal_error", "internal_error")
    return Response(body, status_code=500, media_type="application/json")


def sse_error_event(message: str) -> bytes:
    """A mid-stream error, sent in-band after the headers already went out (as vLLM does)."""
    body = error_body(message, "upstream_error", "stream_interrupted").decode()
    return f"data: {body}\n\ndata: [DONE]\n\n".encode()


def sse_response_error_event(message: str, sequence_number: int) -> bytes:
    """The same on a Responses API stream: its ``error`` event (such streams have no
    ``[DONE]``)."""
    event = {"type": "error", "code": "stream_interrupted", "message": message, "param": None,
             "sequence_number": sequence_number}  # fmt: skip
    return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
