from __future__ import annotations

import json

import pytest

from gateway.errors import InvalidRequest
from gateway.request_fields import route_fields
from gateway.sse import CompletionStream, ResponseStream
from gateway.usage import Usage, usage_from_body

CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"
CREATED = (
    b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
)
DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
COMPLETED = (
    b"event: response.completed\ndata: "
    b'{"type":"response.completed","response":{"status":"incomplete",'
    b'"usage":{"input_tokens":4,"output_tokens":7,"total_tokens":11}}}\n\n'
)


def test_route_fields_forwards_bytes_unchanged_when_nothing_to_add() -> None:
    raw = b'{"model": "tiny", "messages": [], "top_k": 3}'
    routed = route_fields(raw)
    assert (routed.model, routed.stream, routed.body) == ("tiny", False, raw)


def test_route_fields_asks_streams_for_usage() -> None:
    routed = route_fields(b'{"model": "m", "stream": true, "stream_options": {"x": 1}}')
    assert routed.stream and not routed.client_wants_usage
    assert json.loads(routed.body)["stream_options"] == {"x": 1, "include_usage": True}
    raw = b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}}'
    assert route_fields(raw).body == raw


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"model": 3}', b'{"model": "m", "stream": "yes"}'])
def test_route_fields_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        route_fields(raw)


def test_watcher_handles_events_split_across_chunks_and_drops_usage() -> None:
    stream = ROLE + CONTENT + USAGE + DONE
    watcher = CompletionStream(drop_usage_event=True)
    out = b"".join(watcher.feed(stream[i : i + 7]) for i in range(0, len(stream), 7))
    out += watcher.flush()
    assert out == ROLE + CONTENT + DONE
    assert watcher.usage == Usage(3, 2) and watcher.done
    assert watcher.first_token_at is not None


def test_watcher_keeps_usage_when_asked_and_ignores_role_chunk_for_ttft() -> None:
    watcher = CompletionStream(drop_usage_event=False)
    assert watcher.feed(ROLE) == ROLE
    assert watcher.first_token_at is None
    assert watcher.feed(USAGE + DONE) == USAGE + DONE


def test_a_responses_stream_ends_with_its_final_event_which_has_the_usage() -> None:
    stream = CREATED + DELTA + DELTA + COMPLETED
    watcher = ResponseStream()
    out = watcher.feed(stream[:50])
    assert watcher.first_token_at is None  # response.created is not a token
    out += b"".join(watcher.feed(stream[i : i + 9]) for i in range(50, len(stream), 9))
    assert out + watcher.flush() == stream  # every event goes on; nothing is added
    assert watcher.done and watcher.usage == Usage(4, 7)
    assert watcher.first_token_at is not None and watcher.last_token_at is not None


@pytest.mark.parametrize("end", [b"response.failed", b"response.incomplete"])
def test_a_responses_stream_may_end_failed_or_incomplete(end: bytes) -> None:
    watcher = ResponseStream()
    watcher.feed(CREATED + COMPLETED.replace(b"response.completed", end))
    assert watcher.done and watcher.usage == Usage(4, 7)


def test_a_responses_stream_cut_short_gets_an_error_event_not_done() -> None:
    watcher = ResponseStream()
    watcher.feed(CREATED + DELTA)
    assert not watcher.done and watcher.usage is None
    event = watcher.error_event("the backend ended the stream before response.completed")
    kind, _, data = event.removesuffix(b"\n\n").partition(b"\n")
    assert kind == b"event: error" and b"[DONE]" not in event
    assert json.loads(data.removeprefix(b"data: ")) == {
        "type": "error",
        "code": "stream_interrupted",
        "message": "the backend ended the stream before response.completed",
        "param": None,
        "sequence_number": 2,
    }


def test_usage_from_body() -> None:
    assert usage_from_body(b'{"usage": {"prompt_tokens": 4, "completion_tokens": 9}}') == Usage(
        4, 9
    )
    assert usage_from_body(b"not json") is None
    responses = b'{"object": "response", "usage": {"input_tokens": 3, "output_tokens": 5}}'
    assert usage_from_body(responses) == Usage(3, 5)
