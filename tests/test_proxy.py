"""What the proxy forwards and records, on real sockets, fake vLLM behind it: the Responses
API's streams and usage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from conftest import LiveServer

Start = Callable[..., LiveServer]
RESPONSES = {"model": "tiny", "input": "hi there", "max_output_tokens": 5}
TINY = {"model": "tiny", "variant": "base"}


def sample(server: LiveServer, name: str, **labels: str) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


def ledger(server: LiveServer, group_by: str = "endpoint,status") -> list[dict[str, Any]]:
    r = httpx.get(server.url + "/admin/usage", params={"group_by": group_by}, timeout=30)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    return rows


def events(server: LiveServer, body: dict[str, object]) -> list[tuple[str, str]]:
    """A streamed answer's SSE events, as (event type, data)."""
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
    found = []
    for event in text.split("\n\n")[:-1]:
        kind, _, data = event.partition("\n")
        found.append((kind.removeprefix("event: "), data.removeprefix("data: ")))
    return found


def test_a_responses_stream_is_whole_metered_and_timed(gateway: Start) -> None:
    server = gateway()
    got = events(server, {**RESPONSES, "stream": True})
    kinds = [kind for kind, _ in got]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    assert "error" not in kinds and all("[DONE]" not in data for _, data in got)
    status = {**TINY, "endpoint": "responses"}
    assert sample(server, "quantgate_requests_total", **status, status="200") == 1
    assert sample(server, "quantgate_requests_total", **status, status="502") == 0
    assert sample(server, "quantgate_upstream_errors_total", **TINY) == 0
    assert sample(server, "quantgate_completion_tokens_total", **TINY) == 5
    assert sample(server, "quantgate_prompt_tokens_total", **TINY) == 2
    assert sample(server, "quantgate_time_to_first_token_seconds_count", **TINY) == 1
    [row] = ledger(server)
    assert (row["endpoint"], row["status"], row["errors"]) == ("responses", 200, 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 5)
    assert row["ttft_s_avg"] is not None


def test_a_whole_response_is_metered(gateway: Start) -> None:
    server = gateway()
    r = httpx.post(server.url + "/v1/responses", json=RESPONSES, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["output_tokens"] == 5
    [row] = ledger(server)
    assert (row["endpoint"], row["status"]) == ("responses", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 5)


def test_a_responses_stream_cut_short_ends_with_an_error_event(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BREAK_AFTER", "2")
    server = gateway()
    got = events(server, {**RESPONSES, "stream": True})
    kind, data = got[-1]
    assert kind == "error" and '"code": "stream_interrupted"' in data
    assert "before response.completed" in data
    assert [k for k, _ in got].count("response.output_text.delta") == 2
    assert all("[DONE]" not in data for _, data in got)
    [row] = ledger(server)
    assert (row["endpoint"], row["status"], row["errors"]) == ("responses", 502, 1)
