"""A lean HTTP/1.1 client for the backends: pooled keep-alive connections, httptools parsing.

The proxy's cost per request is the product, and a general client (httpx) spends several
times more CPU per request than the whole budget (0.5 ms). This one does only what the proxy
needs: POST a body, read the status and headers, then the body whole or chunk by chunk as the
backend sends it (chunked encoding decoded by httptools), with a deadline for the first byte
and for each pause between chunks.

Errors: ``UpstreamConnectError`` (could not connect or the connection broke before the status
line: safe to send elsewhere), ``UpstreamTimeout``, ``UpstreamBroken`` (broke mid-body).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

PAUSE_ABOVE = 1 << 20  # bytes buffered before reading from the backend pauses
Address = tuple[str, int, bool]  # host, port, TLS


def parse_address(url: str) -> tuple[Address, str]:
    """``https://h:8443/prefix`` -> ((h, 8443, True), "/prefix")."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return (parts.hostname or "127.0.0.1", port, tls), parts.path.rstrip("/")


class TransportError(Exception):
    """The connection to a backend failed (the proxy turns it into an TransportError answer)."""


class UpstreamConnectError(TransportError):
    """Nothing of the response arrived: the request may be sent to another replica."""


class UpstreamTimeout(TransportError):
    pass


class UpstreamBroken(TransportError):
    """The backend broke off after the response started."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.error: BaseException | None = None
        self.keep_alive = True
        self._loop = asyncio.get_running_loop()  # made by create_connection, in the loop
        self._last_data = 0.0  # loop time of the last bytes from the backend
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamBroken(f"invalid HTTP from the backend: {exc}")
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        if not self.complete and self.error is None:
            broken = UpstreamBroken if self.headers_done else UpstreamConnectError
            self.error = broken(f"the backend closed the connection ({exc or 'EOF'})")
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_ABOVE and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- for the response ------------------------------------------------------------------
    def reset(self) -> None:
        self.stop_watchdog()
        self._chunks.clear()
        self._buffered = 0
        self.status, self.headers = 0, []
        self.headers_done = self.complete = False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, limit_s: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(limit_s, self._expire, self._waiter, what, limit_s)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[None], what: str, timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout(f"no {what} from the backend in {timeout:g} s"))

    async def wait_data(self, idle_s: float) -> None:
        """Wait for more body bytes, at most ``idle_s`` after the last ones arrived.

        One timer per stream, re-armed only when it fires early, rather than a timer made and
        cancelled for every chunk: a stream of one token per chunk wakes up once per token.
        """
        self._waiter = self._loop.create_future()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._last_data + idle_s, self._check_idle, idle_s)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_idle(self, idle_s: float) -> None:
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now: the next wait_data arms it again
        due = self._last_data + idle_s
        if self._loop.time() < due:
            self._watchdog = self._loop.call_at(due, self._check_idle, idle_s)
        else:
            waiter.set_exception(UpstreamTimeout(f"no data from the backend in {idle_s:g} s"))

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > PAUSE_ABOVE and self.transport is not None:
            self.transport.resume_reading()
        self._buffered = 0
        return data

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    def close(self) -> None:
        self.stop_watchdog()
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    def __init__(self, conn: _Connection, pool: UpstreamPool, key: Address) -> None:
        self._conn = conn
        self._pool = pool
        self._key = key
        self.status = conn.status
        self.headers = conn.headers
        self.body = b""  # filled in by whoever reads the body whole
        self._released = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self, idle_timeout: float) -> bytes | None:
        """The body bytes that arrived since the last call; None once the body is complete."""
        conn = self._conn
        while not conn.has_data:
            if conn.complete:
                return None
            if conn.error is not None:
                raise conn.error
            await conn.wait_data(idle_timeout)
        return conn.take()

    async def read(self, idle_timeout: float) -> bytes:
        parts = []
        while (chunk := await self.next_chunk(idle_timeout)) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def abort(self) -> None:
        """Close the connection now: the backend sees the client gone and stops generating."""
        self._conn.error = self._conn.error or UpstreamBroken("aborted: the client went away")
        self._conn.close()
        self._conn._wake()

    def release(self) -> None:
        """Give the connection back if the body was read whole, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.stop_watchdog()
        if conn.complete and conn.keep_alive and conn.error is None:
            self._pool.put_back(self._key, conn)
        else:
            conn.close()


class UpstreamPool:
    def __init__(self, connect_timeout_s: float, max_idle_per_host: int = 256) -> None:
        self._connect_timeout = connect_timeout_s
        self._max_idle = max_idle_per_host
        self._idle: dict[Address, list[_Connection]] = {}

    async def post(
        self,
        address: Address,
        path: str,
        body: bytes,
        headers: dict[str, str],
        first_byte_timeout_s: float,
    ) -> UpstreamResponse:
        """Send a POST and return once the status line and headers arrived.

        A pooled connection the backend had already closed is retried once on a new one.
        """
        key = address
        host, port, _ = address
        head = _request_head(host, port, path, len(body), headers)
        for attempt in (1, 2):
            conn, reused = await self._connection(key)
            conn.reset()
            assert conn.transport is not None
            conn.transport.write(head + body)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(first_byte_timeout_s, "response")
            except UpstreamConnectError:
                conn.close()
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return UpstreamResponse(conn, self, key)
        raise AssertionError("unreachable")

    async def _connection(self, key: Address) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.keep_alive and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            tls = ssl.create_default_context() if key[2] else None
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, key[0], key[1], ssl=tls), self._connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            raise UpstreamConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc!r}") from exc
        return conn, False

    def put_back(self, key: Address, conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()
        self._idle.clear()


def _request_head(host: str, port: int, path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
