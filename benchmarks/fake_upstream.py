"""A minimal, fast OpenAI-compatible upstream for overhead benchmarks (asyncio + uvloop).

Answers ``GET /v1/models`` with one model, any other GET with 200 (health), every POST with a
canned chat completion, or, when the body says ``"stream": true``,
with N SSE chunks (``--tokens``) then a usage event and ``[DONE]``. It does as little work as
possible so that what is measured is the gateway, not the upstream. Never a stand-in for vLLM
as proof that serving works.
"""

from __future__ import annotations

import argparse
import asyncio
import json

HEALTH = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_LISTED = b'{"object": "list", "data": [{"id": "bench", "object": "model"}]}'
MODELS = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_LISTED),
    _LISTED,
)  # what the gateway asks once, to learn the name this upstream serves


def _completion() -> bytes:
    body = json.dumps({
        "id": "bench", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 16},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
    }).encode()  # fmt: skip
    head = (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _stream_parts(tokens: int) -> list[bytes]:
    """Status line + headers, then one chunked-encoding frame per SSE event, then the end."""
    chunk = {"id": "bench", "object": "chat.completion.chunk", "model": "bench",
             "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}  # fmt: skip
    usage = {"id": "bench", "object": "chat.completion.chunk", "model": "bench", "choices": [],
             "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": tokens + 12}}  # fmt: skip
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n"] * tokens
    events += [b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return [head, *(b"%x\r\n%s\r\n" % (len(e), e) for e in events), b"0\r\n\r\n"]


class Upstream(asyncio.Protocol):
    def __init__(self, completion: bytes, parts: list[bytes], itl_s: float = 0.0) -> None:
        self._completion, self._parts, self._stream = completion, parts, b"".join(parts)
        self._itl = itl_s
        self._tasks: set[asyncio.Future[None]] = set()
        self._buf = b""
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self._buf) < end + 4 + length:
                return
            body = self._buf[end + 4 : end + 4 + length]
            self._buf = self._buf[end + 4 + length :]
            assert self._transport is not None
            if head.startswith(b"get /v1/models"):
                self._transport.write(MODELS)
            elif head.startswith(b"get"):
                self._transport.write(HEALTH)
            elif b'"stream":true' in body.replace(b" ", b""):
                if self._itl:
                    task = asyncio.ensure_future(self._paced(self._transport))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    self._transport.write(self._stream)
            else:
                self._transport.write(self._completion)

    async def _paced(self, transport: asyncio.WriteTransport) -> None:
        """The same stream, one HTTP chunk per token every ``itl_s``, like a real server."""
        transport.write(self._parts[0])
        for part in self._parts[1:]:
            await asyncio.sleep(self._itl)
            if transport.is_closing():
                return
            transport.write(part)


async def serve(port: int, tokens: int, itl_s: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    completion, parts = _completion(), _stream_parts(tokens)
    server = await loop.create_server(lambda: Upstream(completion, parts, itl_s), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--itl-ms", type=float, default=0.0, help="pace streamed tokens")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.tokens, args.itl_ms / 1000))


if __name__ == "__main__":
    main()
