"""loadtests/locustfile.py under Locust, against a scripted upstream that answers well or badly.

The upstream stands in for a server so that each kind of failure comes on cue; the real stack
is load-tested in test_loadtest_smoke.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import LiveServer, run_locust

MAX_TOKENS = 6
ERROR = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "boom"}}
STREAM_TURNS = ("ok", "error event", "no [DONE]")
ANSWER_TURNS = ("ok", "error body", "HTTP 503")


def sse(event: object) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def scripted_app(served: Counter[str]) -> Starlette:
    """Streams and plain answers take turns through the cases above; ``served`` counts them."""
    stream_turns, answer_turns = itertools.cycle(STREAM_TURNS), itertools.cycle(ANSWER_TURNS)

    async def chat(request: Request) -> Response:
        body = await request.json()
        assert body["max_tokens"] == MAX_TOKENS and body["ignore_eos"] is True
        assert request.headers["authorization"].startswith("Bearer sk-load-")
        if not body.get("stream"):
            turn = next(answer_turns)
            served["answer " + turn] += 1
            if turn == "ok":
                message = {"role": "assistant", "content": "x" * MAX_TOKENS}
                return JSONResponse({"choices": [{"index": 0, "message": message}]})
            return JSONResponse(ERROR, status_code=200 if turn == "error body" else 503)
        assert body["stream_options"] == {"include_usage": True}
        turn = next(stream_turns)
        served["stream " + turn] += 1

        async def events() -> AsyncIterator[bytes]:
            for _ in range(MAX_TOKENS):
                await asyncio.sleep(0.005)
                yield sse({"choices": [{"index": 0, "delta": {"content": "x"}}]})
            if turn == "error event":
                yield sse(ERROR)
            if turn != "no [DONE]":
                yield sse({"choices": [], "usage": {"completion_tokens": MAX_TOKENS}})
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_failures_ttft_and_tokens_per_second_are_reported(tmp_path: Path) -> None:
    served: Counter[str] = Counter()
    with LiveServer(scripted_app(served)) as upstream:  # type: ignore[arg-type]
        run = run_locust(
            upstream.url, tmp_path, "--mix", "chat-stream=1,chat=1", "--max-tokens",
            str(MAX_TOKENS), "--warmup-timeout", "0",
        )  # fmt: skip
    assert run.returncode == 1, run.output  # Locust's exit code when a request failed
    streams, answers = run.stats["POST", "chat-stream"], run.stats["POST", "chat"]
    assert int(streams["Request Count"]) == sum(served["stream " + t] for t in STREAM_TURNS) > 3
    assert int(answers["Request Count"]) == sum(served["answer " + t] for t in ANSWER_TURNS) > 3
    assert int(streams["Failure Count"]) == sum(served["stream " + t] for t in STREAM_TURNS[1:])
    assert int(answers["Failure Count"]) == sum(served["answer " + t] for t in ANSWER_TURNS[1:])
    # only good streams give a time to first token and a speed
    ttft, speed = run.stats["TTFT", "chat-stream"], run.stats["TOKENS/S", "chat-stream"]
    assert int(ttft["Request Count"]) == int(speed["Request Count"]) == served["stream ok"]
    assert 0 < float(ttft["Median Response Time"]) < float(streams["Median Response Time"])
    assert float(speed["Min Response Time"]) > 0  # tokens/s (chunks that arrive together: high)
    assert float(speed["Average Content Size"]) == MAX_TOKENS  # tokens, from the usage event
    total = run.stats["", "Aggregated"]  # requests only: not the TTFT and TOKENS/S rows
    assert int(total["Request Count"]) == int(streams["Request Count"]) + int(
        answers["Request Count"]
    )
    failures = (tmp_path / "stats_failures.csv").read_text()
    for message in (
        "error event: boom: boom",
        "stream ended without [DONE]",
        "error body: boom: boom",
        "HTTP 503: boom: boom",
    ):
        assert message in failures
    report = (tmp_path / "report.html").read_text()
    assert "TTFT" in report and "TOKENS/S" in report
