"""GET /admin/usage and /v1/models with keys, on the real app over a real socket."""

from __future__ import annotations

import csv
import hashlib
import io
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from test_ledger import T0, rows

from conftest import LiveServer, make_fleet, write_manifest
from gateway.app import create_app
from gateway.ledger import UsageRow
from gateway.ledger_sqlite import INSERT, iso
from gateway.settings import GatewaySettings
from serving.manifest import ApiKey, Auth

ADMIN = "admin-secret-4411"
CLIENT = "sk-client-7720"
Start = Callable[[], LiveServer]


@pytest.fixture
def server(tmp_path: Path, model_dir: Path, fake_vllm_python: Path) -> Iterator[LiveServer]:
    digest = hashlib.sha256(CLIENT.encode()).hexdigest()
    auth = Auth(keys=(ApiKey(name="gptq-only", key_sha256=digest, models=("tiny:gptq",)),))
    manifest = write_manifest(tmp_path, model_dir).model_copy(update={"auth": auth})
    registry = CollectorRegistry()
    settings = GatewaySettings.model_validate({"admin_key": ADMIN})
    app = create_app(make_fleet(manifest, fake_vllm_python), settings, registry)
    with LiveServer(app, registry) as live:
        yield live


def insert(db: Path, data: list[UsageRow]) -> None:
    """Rows as another gateway process sharing the SQLite file would write them."""
    with sqlite3.connect(db) as conn:
        conn.executemany(
            INSERT,
            [(r.id, iso(r.ts), r.key, r.model, r.variant, r.replica, r.endpoint, r.status,
              r.prompt_tokens, r.completion_tokens, r.latency_s, r.ttft_s) for r in data],
        )  # fmt: skip


def admin_get(server: LiveServer, key: str | None = ADMIN, **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + "/admin/usage", params=params, headers=headers, timeout=30)


def test_usage_needs_the_admin_key_not_a_client_key(server: LiveServer) -> None:
    for key in (None, "wrong", CLIENT):
        r = admin_get(server, key)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    assert admin_get(server).status_code == 200


def test_usage_json_groups_and_filters(server: LiveServer, tmp_path: Path) -> None:
    data = rows(100)
    insert(tmp_path / "cache" / "usage.sqlite3", data)
    body = admin_get(server, group_by="key,variant").json()
    assert body["group_by"] == ["key", "variant"]
    got = {(r["key"], r["variant"]): r["completion_tokens"] for r in body["data"]}
    want: dict[tuple[str, str], int] = {}
    for r in data:
        want[r.key, r.variant] = want.get((r.key, r.variant), 0) + r.completion_tokens
    assert got == want
    since = (T0.replace(tzinfo=None).isoformat(), "2026-11-01T12:01:00Z")  # naive: UTC
    assert admin_get(server, group_by="", since=since[0]).json()["data"][0]["requests"] == 100
    assert admin_get(server, group_by="", since=since[1]).json()["data"][0]["requests"] == 40


def test_usage_csv_export(server: LiveServer, tmp_path: Path) -> None:
    insert(tmp_path / "cache" / "usage.sqlite3", rows(30))
    r = admin_get(server, group_by="key", format="csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [t["key"] for t in table] == ["a", "b"]
    assert sum(int(t["requests"]) for t in table) == 30
    assert list(table[0])[:3] == ["key", "requests", "errors"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "key,secret"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_parameters_are_openai_style_400s(
    server: LiveServer, params: dict[str, str], param: str
) -> None:
    r = admin_get(server, **params)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_models_need_a_key_and_list_only_allowed_ones(server: LiveServer) -> None:
    assert httpx.get(server.url + "/v1/models").status_code == 401
    wrong = httpx.get(server.url + "/v1/models", headers={"authorization": "Bearer sk-x"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.get(server.url + "/v1/models", headers={"authorization": f"Bearer {CLIENT}"})
    assert [card["id"] for card in ok.json()["data"]] == ["tiny:gptq"]


def test_rate_limit_metric_is_exported(server: LiveServer) -> None:
    text = httpx.get(server.url + "/metrics").text
    assert "quantgate_ledger_queue_rows" in text
    assert "# TYPE quantgate_rate_limited_total counter" in text
