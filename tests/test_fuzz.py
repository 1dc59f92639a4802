"""Schemathesis fuzzes every route of the OpenAPI schema: nothing may answer 5xx.

The gateway runs on real sockets in front of the fake vLLM (started by the real launcher)
and the fake quantizer; the OpenAI routes get arbitrary JSON objects. (Schemathesis's pytest
plugin does not run on pytest 9, so the operations are driven through Hypothesis directly.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from conftest import LiveServer


def test_no_route_answers_5xx(gateway: Callable[..., LiveServer]) -> None:
    server = gateway()
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        fuzz()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /v1/chat/completions" in tested and "GET /admin/backends" in tested
    assert len(tested) >= 15, tested
    print(f"fuzzed {len(tested)} operations: {tested}")
