"""The proxy: forward an OpenAI request to the variant's backend and relay the answer.

Only ``model``/``stream`` are read from the request; the body goes on as received (streams
that did not ask for usage get ``stream_options.include_usage`` added, and the usage event
is taken out again on the way back). Streams are relayed as bytes as they arrive; the
upstream response is always closed in a ``finally``; an error after the headers went out
is sent in-band as an SSE error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import PayloadTooLarge, UpstreamError, error_response, sse_error_event
from gateway.metrics import UNKNOWN, GatewayMetrics
from gateway.usage import RoutedRequest, StreamWatcher, Usage, route_fields, usage_from_body
from serving.errors import QuantgateError
from serving.fleet import Fleet, Lease

FORWARDED_RESPONSE_HEADERS = ("content-type",)
RETRY_STATUS = frozenset({502, 503})
MAX_ATTEMPTS = 3


@dataclass
class _Call:
    endpoint: str
    started: float
    model: str = UNKNOWN
    variant: str = UNKNOWN
    in_flight: bool = False


class _Retry(Exception):
    """The replica answered 502/503 before any byte reached the client: try another."""


class Proxy:
    def __init__(
        self, fleet: Fleet, client: httpx.AsyncClient, metrics: GatewayMetrics, max_body_bytes: int
    ) -> None:
        self._fleet = fleet
        self._client = client
        self._metrics = metrics
        self._max_body = max_body_bytes

    async def handle(self, request: Request, path: str, endpoint: str) -> Response:
        call = _Call(endpoint, time.perf_counter())
        try:
            raw = await self._read_body(request)
            routed = route_fields(raw)
            call.model, call.variant = self._fleet.resolve(routed.model)
            lease, upstream, body = await self._exchange(path, routed, call)
        except QuantgateError as exc:
            response = error_response(exc)
            self._finish(call, response.status_code, None)
            return response
        if body is None:
            watcher = StreamWatcher(call.started, drop_usage_event=not routed.client_wants_usage)
            return StreamingResponse(
                self._relay(upstream, watcher, call, lease),
                status_code=200,
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        lease.release()
        self._finish(call, upstream.status_code, usage_from_body(body))
        headers = {k: v for k, v in upstream.headers.items() if k in FORWARDED_RESPONSE_HEADERS}
        return Response(body, status_code=upstream.status_code, headers=headers)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise PayloadTooLarge(f"request body exceeds {self._max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise PayloadTooLarge(f"request body exceeds {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _exchange(
        self, path: str, routed: RoutedRequest, call: _Call
    ) -> tuple[Lease, httpx.Response, bytes | None]:
        """Send to a replica; on a connection failure or a 502/503 before any byte reached the
        client, send again to another replica. Streams return at their headers (body None);
        other answers are read whole, so a replica dying mid-answer is retried too."""
        tried: set[int] = set()
        m, labels = self._metrics, (call.model, call.variant)
        self._enter(call)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            lease = await self._fleet.acquire(call.model, call.variant, frozenset(tried))
            body = (
                routed.body
                if lease.upstream_model is None
                else routed.renamed(lease.upstream_model)
            )
            request = self._client.build_request(
                "POST", lease.url + path, content=body, headers=lease.headers
            )
            try:
                upstream = await self._client.send(request, stream=True)
                if upstream.status_code in RETRY_STATUS and attempt < MAX_ATTEMPTS:
                    await upstream.aclose()
                    raise _Retry
                if routed.stream and upstream.status_code == 200:
                    return lease, upstream, None
                try:
                    body = await upstream.aread()
                finally:
                    await upstream.aclose()
                return lease, upstream, body
            except (httpx.TransportError, _Retry) as exc:
                lease.release()
                tried.add(lease.replica.index)
                m.upstream_errors.labels(*labels).inc()
                if attempt == MAX_ATTEMPTS:
                    raise UpstreamError(
                        f"backend for {call.model}:{call.variant} failed {attempt} times: {exc!r}"
                    ) from exc
                m.retries.labels(*labels).inc()
        raise AssertionError("unreachable")

    def _enter(self, call: _Call) -> None:
        self._metrics.in_flight.labels(call.model, call.variant).inc()
        call.in_flight = True

    async def _relay(
        self, upstream: httpx.Response, watcher: StreamWatcher, call: _Call, lease: Lease
    ) -> AsyncIterator[bytes]:
        status = 200
        try:
            async for chunk in upstream.aiter_raw():
                out = watcher.feed(chunk)
                if out:
                    yield out
            rest = watcher.flush()
            if rest:
                yield rest
            if not watcher.done:
                status = 502
                self._metrics.upstream_errors.labels(call.model, call.variant).inc()
                yield sse_error_event("the backend ended the stream before [DONE]")
        except httpx.HTTPError as exc:
            status = 502
            self._metrics.upstream_errors.labels(call.model, call.variant).inc()
            yield sse_error_event(f"the backend broke off the stream: {exc!r}")
        finally:
            await upstream.aclose()
            lease.release()
            self._finish(call, status, watcher.usage, watcher)

    def _finish(
        self, call: _Call, status: int, usage: Usage | None, watcher: StreamWatcher | None = None
    ) -> None:
        m, labels = self._metrics, (call.model, call.variant)
        if call.in_flight:
            m.in_flight.labels(*labels).dec()
            call.in_flight = False
        m.requests.labels(*labels, call.endpoint, str(status)).inc()
        m.request_duration.labels(*labels, call.endpoint).observe(
            time.perf_counter() - call.started
        )
        if usage is not None:
            m.prompt_tokens.labels(*labels).inc(usage.prompt_tokens)
            m.completion_tokens.labels(*labels).inc(usage.completion_tokens)
        if watcher is not None and watcher.first_token_at is not None:
            m.time_to_first_token.labels(*labels).observe(watcher.first_token_at - call.started)
            tokens = usage.completion_tokens if usage else 0
            if tokens > 1 and watcher.last_token_at is not None:
                itl = (watcher.last_token_at - watcher.first_token_at) / (tokens - 1)
                m.inter_token_latency.labels(*labels).observe(itl)
