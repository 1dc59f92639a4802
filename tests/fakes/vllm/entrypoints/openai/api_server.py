"""A fake vLLM OpenAI server for gateway tests: same command line, same wire format, knobs.

Never proof that serving works (the slow tests use real vLLM); it lets gateway tests run
real sockets through the real launcher in a second. Knobs (environment variables):
FAKE_TTFT_S, FAKE_ITL_S (stream pacing), FAKE_EXIT_AT_START=1 (die while starting),
FAKE_BREAK_AFTER=N (end a stream after N chunks, no [DONE]), FAKE_API_KEY (required key),
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
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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
            err = {"message": "the engine is asleep", "type": "InternalServerError", "code": 500}
            return JSONResponse({"error": err}, status_code=500)
        key = os.environ.get("FAKE_API_KEY")
        if key and request.headers.get("authorization") != f"Bearer {key}":
            err = {"message": "bad key", "type": "AuthenticationError", "code": 401}
            return JSONResponse({"error": err}, status_code=401)
        body = await request.json()
        if body.get("model") not in names:
            err = {
                "message": f"The model `{body.get('model')}` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
            return JSONResponse({"error": err}, status_code=404)
        chat = request.url.path.endswith("chat/completions")
        prompt = json.dumps(body.get("messages") if chat else body.get("prompt"))
        n_prompt, n_out = len(prompt.split()), int(body.get("max_tokens") or 8)
        if isinstance(body.get("prompt"), list) and all(isinstance(t, int) for t in body["prompt"]):
            n_prompt = len(body["prompt"])  # token ids
        words = [WORDS[i % len(WORDS)] for i in range(n_out)]
        itl = itl_alone + itl_per_stream * state["active"]
        if not body.get("stream"):
            state["active"] += 1
            try:
                await asyncio.sleep(ttft + itl * n_out)
            finally:
                state["active"] -= 1
            choice = {"index": 0, "finish_reason": "length"}
            choice |= (
                {"message": {"role": "assistant", "content": "".join(words)}}
                if chat
                else {"text": "".join(words)}
            )
            return JSONResponse(
                {
                    "id": "fake-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [choice],
                    "usage": _usage(n_prompt, n_out),
                }
            )
        include = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            state["active"] += 1
            try:
                async for event in _events():
                    yield event
            except BaseException:
                if os.environ.get("FAKE_CANCEL_FILE"):  # the gateway closed the connection
                    Path(os.environ["FAKE_CANCEL_FILE"]).write_text("cancelled")  # noqa: ASYNC240
                raise
            finally:
                state["active"] -= 1

        async def _events() -> AsyncIterator[bytes]:
            await asyncio.sleep(ttft)
            for i, word in enumerate(words):
                if i == break_after:
                    return
                delta = {"delta": {"content": word}} if chat else {"text": word}
                chunk = {
                    "id": "fake-1",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "model": body["model"],
                    "choices": [{"index": 0, **delta, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
                if itl:
                    await asyncio.sleep(itl)
            if include:
                last = {
                    "id": "fake-1",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [],
                    "usage": _usage(n_prompt, n_out),
                }
                yield f"data: {json.dumps(last, separators=(',', ':'))}\n\n".encode()
            yield b"data: [DONE]\n\n"
            await asyncio.sleep(float(os.environ.get("FAKE_LINGER_S", "0")))

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
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
