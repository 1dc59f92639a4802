"""A minimal, fast OpenAI-compatible upstream for overhead benchmarks (asyncio + uvloop).

Answers every POST with a canned chat completion, or, when the body says ``"stream": true``,
with N SSE chunks (``--tokens``) then a usage event and ``[DONE]``. It does as little work as
possible so that what is measured is the gateway, not the upstream. Never a stand-in for vLLM
as proof that serving works.
"""

from __future__ import annotations

import argparse
import asyncio
import json

HEALTH = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


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


def _stream(tokens: int) -> bytes:
    chunk = {"id": "bench", "object": "chat.completion.chunk", "model": "bench",
             "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}  # fmt: skip
    usage = {"id": "bench", "object": "chat.completion.chunk", "model": "bench", "choices": [],
             "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": tokens + 12}}  # fmt: skip
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n"] * tokens
    events += [b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]
    payload = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + payload


class Upstream(asyncio.Protocol):
    def __init__(self, completion: bytes, stream: bytes) -> None:
        self._completion, self._stream = completion, stream
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
            if head.startswith(b"get"):
                self._transport.write(HEALTH)
            elif b'"stream":true' in body.replace(b" ", b""):
                self._transport.write(self._stream)
            else:
                self._transport.write(self._completion)


async def serve(port: int, tokens: int) -> None:
    loop = asyncio.get_running_loop()
    completion, stream = _completion(), _stream(tokens)
    server = await loop.create_server(lambda: Upstream(completion, stream), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.tokens))


if __name__ == "__main__":
    main()
