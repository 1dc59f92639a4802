"""The backend client on real sockets: keep-alive, chunked streams, timeouts, broken peers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.upstream import (
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamTimeout,
    parse_address,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def _serve(handler: Handler) -> tuple[asyncio.Server, tuple[str, int, bool], list[int]]:
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, ("127.0.0.1", port, False), connections


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def test_keep_alive_reuses_one_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await _read_request(reader)
            writer.write(_ok(b"echo:" + body))
            await writer.drain()

    async def main() -> list[bytes]:
        server, address, connections = await _serve(handler)
        pool = UpstreamPool(1.0)
        out = []
        for i in range(3):
            r = await pool.post(address, "/x", b"%d" % i, {}, 5.0)
            out.append(await r.read(5.0))
            r.release()
        assert len(connections) == 1
        pool.close()
        server.close()
        return out

    assert asyncio.run(main()) == [b"echo:0", b"echo:1", b"echo:2"]


def test_chunked_stream_arrives_piece_by_piece() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> list[bytes]:
        server, address, _ = await _serve(handler)
        pool = UpstreamPool(1.0)
        r = await pool.post(address, "/s", b"{}", {}, 5.0)
        chunks = []
        while (chunk := await r.next_chunk(5.0)) is not None:
            chunks.append(chunk)
        r.release()
        server.close()
        return chunks

    assert asyncio.run(main()) == [b"data: 1\n\n", b"data: 2\n\n"]


def test_timeouts_and_broken_peers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def main() -> None:
        pool = UpstreamPool(1.0)
        server, address, _ = await _serve(silent)
        with pytest.raises(UpstreamTimeout, match=r"no response from the backend in 0\.2 s"):
            await pool.post(address, "/", b"{}", {}, 0.2)
        server.close()
        server, address, _ = await _serve(half)
        r = await pool.post(address, "/", b"{}", {}, 5.0)
        with pytest.raises(UpstreamBroken):
            await r.read(5.0)
        r.release()
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamConnectError):
            await pool.post(address, "/", b"{}", {}, 1.0)

    asyncio.run(main())


def test_a_pooled_connection_closed_by_the_backend_is_replaced() -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_ok(b"ok"))
        await writer.drain()
        # then close while the client keeps the connection in its pool

    async def main() -> None:
        server, address, connections = await _serve(one_shot)
        pool = UpstreamPool(1.0)
        for _ in range(2):
            r = await pool.post(address, "/", b"{}", {}, 5.0)
            assert await r.read(5.0) == b"ok"
            r.release()
            await asyncio.sleep(0.05)
        assert len(connections) == 2
        server.close()

    asyncio.run(main())


def test_parse_address() -> None:
    assert parse_address("http://127.0.0.1:8000") == (("127.0.0.1", 8000, False), "")
    assert parse_address("https://api.example/v0/") == (("api.example", 443, True), "/v0")


def test_the_idle_limit_counts_from_the_last_bytes_not_from_the_start() -> None:
    """Chunks every 0.1 s with a 0.25 s idle limit: a 0.6 s stream completes; a backend that
    then goes quiet is cut off after about the idle limit."""

    async def steady(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(6):
            await asyncio.sleep(0.1)
            part = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        await asyncio.sleep(5)  # silence, connection left open

    async def main() -> tuple[list[bytes], float]:
        server, address, _ = await _serve(steady)
        pool = UpstreamPool(1.0)
        r = await pool.post(address, "/s", b"{}", {}, 5.0)
        chunks = []
        loop = asyncio.get_running_loop()
        with pytest.raises(UpstreamTimeout, match=r"no data from the backend in 0\.25 s"):
            while (chunk := await r.next_chunk(0.25)) is not None:
                chunks.append(chunk)
                last = loop.time()
        waited = loop.time() - last
        r.release()
        server.close()
        return chunks, waited

    chunks, waited = asyncio.run(main())
    assert b"".join(chunks) == b"".join(b"data: %d\n\n" % i for i in range(6))
    assert 0.2 <= waited < 1.0
