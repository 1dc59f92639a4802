"""A fake vLLM OpenAI server for gateway tests: same command line, same wire format, knobs.

Serves /v1/chat/completions, /v1/completions and /v1/responses (streamed or not, shaped as
vLLM's), answering 404 with vLLM's error body for a model name it was not started with.

Never proof that serving works (the slow tests use real vLLM); it lets gateway tests run
real sockets through the real launcher in a second. Knobs (environment variables):
FAKE_TTFT_S, FAKE_ITL_S (stream pacing), FAKE_EXIT_AT_START=1 (die while starting),
FAKE_BREAK_AFTER=N (end a stream after N tokens, without [DONE] or response.completed),
FAKE_FAIL_AFTER=N (after N tokens, the engine's error in the stream, as vLLM sends it, and the end),
FAKE_API_KEY (required key), FAKE_REPLY (the answer's text, a token per space-separated word,
instead of the Greek letters),
FAKE_START_DELAY_S (slow start-up), FAKE_LINGER_S (keep a stream open after [DONE]),
FAKE_CANCEL_FILE (written when a stream is cancelled by the client going away),
FAKE_KERNELS (comma-separated kernel names in vLLM's order of preference: the first one not in
VLLM_DISABLED_KERNELS is logged as ``Using <Kernel> for CompressedTensorsWNA16``, as vLLM does),
FAKE_KERNEL_ITL_S (``Kernel=seconds,...``: FAKE_ITL_S of the kernel chosen that way;
``Kernel=base+per_stream``: base plus per_stream for each other request in progress when a
request starts, so kernels can cross over between 1 and 64 streams as real ones do),
FAKE_ENGINE_CHILD=1 (start a child process in the server's process group, as vLLM's engine
core is, and log ``engine pid N``).
Sleep mode, as vLLM's (``--enable-sleep-mode`` and VLLM_SERVER_DEV_MODE=1, else 404): POST
/sleep?level=N, /wake_up, /collective_rpc, /reset_prefix_cache, GET /is_sleeping; knobs
FAKE_SLEEP_S, FAKE_WAKE_S (delays), FAKE_WAKE_FAIL=1 (/wake_up answers 500, and the engine
stays asleep), FAKE_SLEEP_FAIL=1 (/sleep answers 500, the engine stays awake),
FAKE_CALLS_FILE (each sleep-mode call and each request that reached a sleeping engine appended
as a line: ``sleep 1``, ``wake_up``, ``collective_rpc reload_weights``, ``asleep-hit``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

KINDS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
}
WORDS = ["alpha", " beta", " gamma", " delta", " epsilon", " zeta", " eta", " theta"]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _kernel() -> str | None:
    """The kernel vLLM would choose: the first of FAKE_KERNELS that is not disabled."""
    disabled = os.environ.get("VLLM_DISABLED_KERNELS", "").split(",")
    offered = [k for k in os.environ.get("FAKE_KERNELS", "").split(",") if k]
    return next((k for k in offered if k not in disabled), None)


def _itl(kernel: str | None) -> tuple[float, float]:
    """The kernel's inter-token latency alone, and what each other request in progress adds."""
    per_kernel = dict(
        item.split("=") for item in os.environ.get("FAKE_KERNEL_ITL_S", "").split(",") if item
    )
    value = per_kernel.get(kernel or "", os.environ.get("FAKE_ITL_S", "0"))
    base, _, per_stream = value.partition("+")
    return float(base), float(per_stream or 0)


def _note(line: str) -> None:
    if os.environ.get("FAKE_CALLS_FILE"):
        with Path(os.environ["FAKE_CALLS_FILE"]).open("a") as f:
            f.write(line + "\n")


def make_app(names: list[str], sleep_mode: bool = False) -> Starlette:
    ttft = float(os.environ.get("FAKE_TTFT_S", "0"))
    state = {"sleeping": 0, "active": 0}
    itl_alone, itl_per_stream = _itl(_kernel())
    break_after = int(os.environ.get("FAKE_BREAK_AFTER", "-1"))
    fail_after = int(os.environ.get("FAKE_FAIL_AFTER", "-1"))

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}
        )

    async def sleep(request: Request) -> Response:
        level = int(request.query_params.get("level", "1"))
        await asyncio.sleep(float(os.environ.get("FAKE_SLEEP_S", "0")))
        _note(f"sleep {level}")
        if os.environ.get("FAKE_SLEEP_FAIL"):
            return JSONResponse({"error": "cannot offload"}, status_code=500)
        state["sleeping"] = level
        return Response(status_code=200)

    async def wake_up(request: Request) -> Response:
        await asyncio.sleep(float(os.environ.get("FAKE_WAKE_S", "0")))
        _note("wake_up")
        if os.environ.get("FAKE_WAKE_FAIL"):
            return JSONResponse({"error": "CUDA error: out of memory"}, status_code=500)
        state["sleeping"] = 0
        return Response(status_code=200)

    async def is_sleeping(request: Request) -> Response:
        return JSONResponse({"is_sleeping": bool(state["sleeping"])})

    async def collective_rpc(request: Request) -> Response:
        _note(f"collective_rpc {(await request.json()).get('method')}")
        return JSONResponse({"results": [None]})

    async def reset_prefix_cache(request: Request) -> Response:
        _note("reset_prefix_cache")
        return Response(status_code=200)

    async def generate(request: Request) -> Response:
        if state["sleeping"]:
            _note("asleep-hit")
            return _error("the engine is asleep", "InternalServerError", 500)
        key = os.environ.get("FAKE_API_KEY")
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return _error("bad key", "AuthenticationError", 401)
        body = await request.json()
        if body.get("model") not in names:  # as vLLM checks every request's model
            message = f"The model `{body.get('model')}` does not exist."
            return _error(message, "NotFoundError", 404, param="model")
        kind = KINDS[request.url.path]
        n_prompt, n_out = _prompt_tokens(kind, body), _max_tokens(kind, body)
        words = _words(n_out)
        itl = itl_alone + itl_per_stream * state["active"]
        if not body.get("stream"):
            state["active"] += 1
            try:
                await asyncio.sleep(ttft + itl * n_out)
            finally:
                state["active"] -= 1
            return JSONResponse(_answer(kind, body["model"], words, n_prompt))
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        if kind == "responses":
            chunks = _response_events(body["model"], words, n_prompt)
        else:
            chunks = _completion_events(kind, body["model"], words, n_prompt, include)
        if fail_after >= 0:
            chunks = _failing(kind, chunks, fail_after)

        async def events() -> AsyncIterator[bytes]:
            state["active"] += 1
            try:
                async for event in _paced(chunks, ttft, itl, break_after):
                    yield event
            except BaseException:
                if os.environ.get("FAKE_CANCEL_FILE"):  # the gateway closed the connection
                    Path(os.environ["FAKE_CANCEL_FILE"]).write_text("cancelled")  # noqa: ASYNC240
                raise
            finally:
                state["active"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/responses", generate, methods=["POST"]),
    ]
    if sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
        routes += [
            Route("/sleep", sleep, methods=["POST"]),
            Route("/wake_up", wake_up, methods=["POST"]),
            Route("/is_sleeping", is_sleeping),
            Route("/collective_rpc", collective_rpc, methods=["POST"]),
            Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        ]
    return Starlette(routes=routes)


def _error(message: str, type_: str, code: int, param: str | None = None) -> Response:
    """vLLM's error body."""
    err = {"message": message, "type": type_, "param": param, "code": code}
    return JSONResponse({"error": err}, status_code=code)


def _words(n_out: int) -> list[str]:
    """The answer's tokens: FAKE_REPLY's words (at most ``n_out``), else ``n_out`` letters."""
    reply = os.environ.get("FAKE_REPLY")
    if reply:
        first, *rest = reply.split(" ")
        return [first, *(" " + word for word in rest)][:n_out]
    return [WORDS[i % len(WORDS)] for i in range(n_out)]


def _prompt_tokens(kind: str, body: dict[str, Any]) -> int:
    prompt = body.get({"chat": "messages", "responses": "input"}.get(kind, "prompt"))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)  # token ids
    return len(json.dumps(prompt).split())


def _max_tokens(kind: str, body: dict[str, Any]) -> int:
    return int(body.get("max_output_tokens" if kind == "responses" else "max_tokens") or 8)


def _answer(kind: str, model: str, words: list[str], n_prompt: int) -> dict[str, Any]:
    """A whole (non-streamed) answer, as vLLM shapes it for ``kind``."""
    text = "".join(words)
    if kind == "responses":
        return _response(model, "incomplete", text, _response_usage(n_prompt, len(words)))
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    choice |= (
        {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}
    )
    return {
        "id": "fake-1",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(n_prompt, len(words)),
    }


Chunks = Iterator[tuple[bytes, bool]]  # an SSE event, and whether it carries a token


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _completion_events(
    kind: str, model: str, words: list[str], n_prompt: int, include: bool
) -> Chunks:
    """Chat or text completion chunks, the usage chunk if asked for, then ``[DONE]``."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    for word in words:
        delta = {"delta": {"content": word}} if kind == "chat" else {"text": word}
        choice = {"index": 0, **delta, "finish_reason": None}
        yield _data({"id": "fake-1", "object": obj, "model": model, "choices": [choice]}), True
    if include:
        usage = _usage(n_prompt, len(words))
        last = {"id": "fake-1", "object": obj, "model": model, "choices": [], "usage": usage}
        yield _data(last), False
    yield b"data: [DONE]\n\n", False


def _response(model: str, status: str, text: str, usage: object) -> dict[str, Any]:
    """A Responses API object as vLLM sends it (the fields a client reads)."""
    part = {"type": "output_text", "text": text, "annotations": []}
    message = {"id": "msg_fake-1", "type": "message", "role": "assistant", "content": [part]}
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": "resp_fake-1",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "incomplete_details": incomplete,
        "output": [{**message, "status": "completed"}] if text else [],
        "usage": usage,
    }


def _response_usage(n_prompt: int, n_out: int) -> dict[str, Any]:
    return {
        "input_tokens": n_prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n_out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": n_prompt + n_out,
    }


def _response_events(model: str, words: list[str], n_prompt: int) -> Chunks:
    """The Responses API stream as vLLM sends it: ``event: <type>`` + ``data:``, a
    ``sequence_number`` each, ``response.completed`` (its ``response.usage``) last, no
    ``[DONE]``. vLLM ends with ``response.completed`` even when the status is incomplete."""
    seq = itertools.count()
    where = {"item_id": "msg_fake-1", "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": next(seq), **fields}
        return f"event: {kind}\n".encode() + _data(payload)

    yield event("response.created", response=_response(model, "in_progress", "", None)), False
    yield event("response.in_progress", response=_response(model, "in_progress", "", None)), False
    for word in words:
        yield event("response.output_text.delta", delta=word, logprobs=[], **where), True
    text = "".join(words)
    yield event("response.output_text.done", text=text, logprobs=[], **where), False
    final = _response(model, "incomplete", text, _response_usage(n_prompt, len(words)))
    yield event("response.completed", response=final), False


def _failing(kind: str, chunks: Chunks, after: int) -> Chunks:
    """``chunks`` up to token ``after``, then the engine's error as vLLM streams it: an error
    body then ``[DONE]`` (completions), or an ``error`` event that ends the stream."""
    tokens = 0
    for chunk, token in chunks:
        if token and tokens == after:
            break
        tokens += token
        yield chunk, token
    message = "Request failed with an internal error during generation"
    if kind == "responses":
        event = {"type": "error", "code": "InternalServerError", "message": message, "param": None}
        yield f"event: error\ndata: {json.dumps(event)}\n\n".encode(), False
        return
    error = {"message": message, "type": "InternalServerError", "param": None, "code": 500}
    yield f"data: {json.dumps({'error': error})}\n\n".encode(), False
    yield b"data: [DONE]\n\n", False


async def _paced(chunks: Chunks, ttft: float, itl: float, break_after: int) -> AsyncIterator[bytes]:
    """``chunks`` at the pace of a model: ``ttft`` before the first token, ``itl`` after each;
    ended before token ``break_after`` (no end event) when that is not -1."""
    tokens = 0
    for chunk, token in chunks:
        if token and tokens == break_after:
            return
        if token and tokens == 0:
            await asyncio.sleep(ttft)
        yield chunk
        if token:
            tokens += 1
            if itl:
                await asyncio.sleep(itl)
    await asyncio.sleep(float(os.environ.get("FAKE_LINGER_S", "0")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    args, _ = parser.parse_known_args()
    print(f"fake vLLM for {args.model} on {args.port}", flush=True)
    for name in sorted(n for n in os.environ if n.startswith("VLLM_")):
        print(f"env {name}={os.environ[name]}", flush=True)
    if _kernel():
        print(f"INFO Using {_kernel()} for CompressedTensorsWNA16", flush=True)
    if os.environ.get("FAKE_ENGINE_CHILD"):
        engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"engine pid {engine.pid}", flush=True)
    time.sleep(float(os.environ.get("FAKE_START_DELAY_S", "0")))
    if os.environ.get("FAKE_EXIT_AT_START"):
        print("ValueError: fake start-up failure (bad argument)", file=sys.stderr, flush=True)
        sys.exit(3)
    uvicorn.run(
        make_app(args.served_model_name, args.enable_sleep_mode),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
