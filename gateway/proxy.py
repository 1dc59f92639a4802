"""The proxy: forward an OpenAI request to a replica of its variant and relay the answer.

A raw ASGI app on the hot path (``QuantgateApp`` sends the proxied routes here before any
framework code runs). Only ``model``/``stream`` are read from the request; the body goes on as
received (streams that did not ask for usage get ``stream_options.include_usage`` added, and
the usage event is taken out again on the way back; a ``model`` the replica does not serve, an
alias or ``model:auto``, becomes the name of the variant that answers). Streams are relayed
as they arrive; a client that goes away closes the backend connection, which cancels the
request in vLLM; an error after the headers went out is sent in-band as an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.accounting import Accounting
from gateway.errors import (
    GatewayTimeout,
    PayloadTooLarge,
    UpstreamError,
    error_response,
    internal_error_response,
    upstream_error_body,
)
from gateway.keys import Principal
from gateway.ledger import UsageRow
from gateway.metrics import UNKNOWN, GatewayMetrics
from gateway.request_fields import RoutedRequest, route_fields
from gateway.settings import GatewaySettings
from gateway.sse import CompletionStream, ResponseStream, StreamWatcher
from gateway.upstream import (
    TransportError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    parse_address,
)
from gateway.usage import Usage, usage_from_body
from serving.errors import QuantgateError
from serving.fleet import Fleet, Lease, RequestHints

Scope = dict[str, Any]
Receive = Any
Send = Any


class Endpoint(NamedTuple):
    label: str  # the metrics' and the ledger's endpoint
    add_usage: bool  # whether streams get stream_options.include_usage added
    stream: type[StreamWatcher] = CompletionStream  # the shape of its streams


ENDPOINTS = {
    "/v1/chat/completions": Endpoint("chat", True),
    "/v1/completions": Endpoint("completions", True),
    "/v1/embeddings": Endpoint("embeddings", False),
    "/v1/responses": Endpoint("responses", False, ResponseStream),
    "/tokenize": Endpoint("tokenize", False),
    "/detokenize": Endpoint("detokenize", False),
}
RETRY_STATUS = frozenset({502, 503})
MAX_ATTEMPTS = 3
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

log = logging.getLogger(__name__)


@dataclass
class _Call:
    endpoint: str
    started: float
    model: str = UNKNOWN
    variant: str = UNKNOWN
    in_flight: bool = False
    session: str | None = None
    principal: Principal | None = None
    replica: int | None = None


class _ClientGone(Exception):
    """The client disconnected while its request waited for a replica."""


class _Retry(Exception):
    """The replica answered 502/503 before any byte reached the client: try another."""


class Proxy:
    def __init__(
        self,
        fleet: Fleet,
        pool: UpstreamPool,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
        accounting: Accounting,
    ) -> None:
        self._fleet = fleet
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._accounting = accounting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        endpoint = ENDPOINTS[path]
        call = _Call(endpoint.label, time.perf_counter(), session=_header(scope, b"x-session-id"))
        acct = self._accounting
        try:
            call.principal = acct.authenticate(_header(scope, b"authorization"))
            raw = await self._read_body(scope, receive)
            routed = route_fields(raw, endpoint.add_usage)
            call.model, call.variant = self._fleet.resolve(routed.model)
            acct.authorize(call.principal, call.model, call.variant)
            await acct.admit(call.principal)
            lease, upstream = await self._exchange(path, routed, call, receive)
        except _ClientGone:
            self._finish(call, 499, None)  # left while its variant woke or started: not sent
            return
        except QuantgateError as exc:
            response = error_response(exc)
            self._finish(call, response.status_code, None)
            await response(scope, receive, send)
            return
        except Exception as exc:  # a bug: still an OpenAI body, still counted and logged
            log.exception("internal error serving %s for %s:%s", path, call.model, call.variant)
            response = internal_error_response(exc)
            self._finish(call, 500, None)
            await response(scope, receive, send)
            return
        if routed.stream and upstream.status == 200:
            watcher = endpoint.stream(drop_usage_event=not routed.client_wants_usage)
            await self._relay(upstream, watcher, call, lease, receive, send)
            return
        await self._forward_whole(upstream, call, lease, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _exchange(
        self, path: str, routed: RoutedRequest, call: _Call, receive: Receive
    ) -> tuple[Lease, UpstreamResponse]:
        """Send to a replica; on a connection failure, or a 502/503, before any byte reached the
        client, send again to another replica. Non-streamed answers are read whole here, so a
        replica dying mid-answer is retried too. A replica that is only slow (no answer within
        the timeouts) is neither retried nor counted against its circuit: the client gets 504."""
        tried: set[int] = set()
        hints = RequestHints.of(routed.data, call.session)
        requested = call.variant
        for attempt in range(1, MAX_ATTEMPTS + 1):
            lease = await self._acquire(call, requested, frozenset(tried), hints, receive)
            if attempt == 1:
                call.variant = lease.variant  # a fallback variant may answer
                self._enter(call)
            m = self._metrics.children(call.model, call.variant)
            try:
                upstream = await self._send(path, routed, lease, attempt < MAX_ATTEMPTS)
                lease.succeeded()
                return lease, upstream
            except UpstreamTimeout as exc:
                lease.release()
                m.upstream_errors.inc()
                raise GatewayTimeout(
                    f"backend for {call.model}:{call.variant} timed out: {exc}"
                ) from exc
            except (TransportError, _Retry) as exc:
                lease.release()
                lease.failed()
                tried.add(lease.replica.index)
                m.upstream_errors.inc()
                retryable = isinstance(exc, UpstreamConnectError | _Retry) or not routed.stream
                if attempt == MAX_ATTEMPTS or not retryable:
                    raise UpstreamError(
                        f"backend for {call.model}:{call.variant} failed: {exc}"
                    ) from exc
                m.retries.inc()
        raise AssertionError("unreachable")

    async def _acquire(
        self,
        call: _Call,
        requested: str,
        exclude: frozenset[int],
        hints: RequestHints,
        receive: Receive,
    ) -> Lease:
        acquiring = self._fleet.acquire(call.model, requested, exclude, hints)
        if self._fleet.ready_now(call.model, requested):
            lease = await acquiring
        else:  # it may wait for a start or a wake: give up if the client goes away
            lease = await _unless_client_leaves(acquiring, receive)
        call.replica = lease.replica.index
        return lease

    async def _send(
        self, path: str, routed: RoutedRequest, lease: Lease, retry_status: bool
    ) -> UpstreamResponse:
        """POST to the lease's replica; a non-streamed or error answer is read whole. Raises
        _Retry on a 502/503 while ``retry_status``."""
        s = self._settings
        forward = lease.forward_name(routed.model)
        body = routed.body if forward is None else routed.renamed(forward)
        address, prefix = parse_address(lease.url)
        upstream = await self._pool.post(
            address, prefix + path, body, lease.headers, s.first_byte_timeout_s
        )
        if upstream.status in RETRY_STATUS and retry_status:
            upstream.release()
            raise _Retry
        if not (routed.stream and upstream.status == 200):
            try:
                upstream.body = await upstream.read(s.idle_timeout_s)
            finally:
                upstream.release()  # one cut short is closed: vLLM stops generating it
        return upstream

    def _enter(self, call: _Call) -> None:
        self._metrics.children(call.model, call.variant).in_flight.inc()
        call.in_flight = True

    async def _forward_whole(
        self, upstream: UpstreamResponse, call: _Call, lease: Lease, send: Send
    ) -> None:
        lease.release()
        body, ctype = upstream.body, upstream.header(b"content-type") or b"application/json"
        if upstream.status >= 400:  # the upstream's own error, in the gateway's shape
            body, ctype = upstream_error_body(upstream.status, body), b"application/json"
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            (b"x-quantgate-variant", f"{call.model}:{call.variant}".encode()),
        ]
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._finish(call, upstream.status, usage_from_body(body))

    async def _relay(
        self,
        upstream: UpstreamResponse,
        watcher: StreamWatcher,
        call: _Call,
        lease: Lease,
        receive: Receive,
        send: Send,
    ) -> None:
        gone = asyncio.Event()
        listener = asyncio.ensure_future(_watch_disconnect(receive, gone, upstream))
        status = 200
        try:
            served = (b"x-quantgate-variant", f"{call.model}:{call.variant}".encode())
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, served]}
            )
            idle = self._settings.idle_timeout_s
            while (chunk := await upstream.next_chunk(idle)) is not None:
                out = watcher.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = watcher.flush()
            if watcher.failed is not None:  # in-band: the client has the backend's own event
                status = 502
                self._metrics.children(call.model, call.variant).upstream_errors.inc()
                log.warning("%s:%s: the backend reported an error in the stream: %s",
                            call.model, call.variant, watcher.failed)  # fmt: skip
            elif not watcher.done:
                status = 502
                self._metrics.children(call.model, call.variant).upstream_errors.inc()
                tail += watcher.error_event(f"the backend ended the stream before {watcher.ending}")
            await send({"type": "http.response.body", "body": tail})
        except TransportError as exc:
            if watcher.done:
                pass  # the client had the whole stream and left before the backend closed
            elif gone.is_set():
                status = 499  # the client went away; closing the backend connection cancelled it
            else:
                status = 502
                self._metrics.children(call.model, call.variant).upstream_errors.inc()
                event = watcher.error_event(f"the backend broke off the stream: {exc}")
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": event})
        finally:
            listener.cancel()
            upstream.release()
            lease.release()
            self._finish(call, status, watcher.usage, watcher)

    def _finish(
        self, call: _Call, status: int, usage: Usage | None, watcher: StreamWatcher | None = None
    ) -> None:
        m = self._metrics.children(call.model, call.variant)
        if call.in_flight:
            m.in_flight.dec()
            call.in_flight = False
        self._metrics.requests.labels(call.model, call.variant, call.endpoint, str(status)).inc()
        m.duration(call.endpoint).observe(time.perf_counter() - call.started)
        if usage is not None:
            m.prompt_tokens.inc(usage.prompt_tokens)
            m.completion_tokens.inc(usage.completion_tokens)
        ttft = None
        if watcher is not None and watcher.first_token_at is not None:
            ttft = watcher.first_token_at - call.started
            m.time_to_first_token.observe(ttft)
            tokens = usage.completion_tokens if usage else 0
            if tokens > 1 and watcher.last_token_at is not None:
                itl = (watcher.last_token_at - watcher.first_token_at) / (tokens - 1)
                m.inter_token_latency.observe(itl)
        if call.principal is not None:
            prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
            row = UsageRow(
                call.principal.name, call.model, call.variant, call.replica, call.endpoint,
                status, prompt, completion, time.perf_counter() - call.started, ttft,
            )  # fmt: skip
            self._accounting.settle(call.principal, row)


async def _watch_disconnect(
    receive: Receive, gone: asyncio.Event, upstream: UpstreamResponse
) -> None:
    """When the client disconnects, close the backend connection: vLLM then aborts the request."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    upstream.abort()


async def _unless_client_leaves(acquiring: Coroutine[Any, Any, Lease], receive: Receive) -> Lease:
    """``acquiring``'s lease, or _ClientGone (the wait cancelled: its place in the variant's
    queue is freed) if the client disconnects first."""
    task = asyncio.ensure_future(acquiring)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        lease = await task
        lease.release()  # got one at the last moment: give it back
    raise _ClientGone


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
