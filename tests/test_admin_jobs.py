"""Jobs through the gateway (fake worker, fake vLLM): progress, cancel, metrics, recipes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import pytest

from conftest import LiveServer

Start = Callable[..., LiveServer]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def sample(server: LiveServer, name: str, **labels: str) -> float | None:
    return server.registry.get_sample_value(name, labels)


def _jobs(server: LiveServer) -> list[dict[str, object]]:
    data: list[dict[str, object]] = httpx.get(server.url + "/admin/jobs").json()["data"]
    return data


def test_two_recipes_start_two_jobs_and_durations_are_metrics(gateway: Start) -> None:
    server = gateway()

    async def ask() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = server.url + "/v1/chat/completions"
            bodies = [{**CHAT, "model": m} for m in ["tiny:gptq"] * 10 + ["tiny:awq"] * 10]
            return await asyncio.gather(*(client.post(url, json=b) for b in bodies))

    assert [r.status_code for r in asyncio.run(ask())] == [200] * 20
    jobs = _jobs(server)
    assert sorted(str(j["variant"]) for j in jobs) == ["awq", "gptq"]
    assert all(j["progress"] == {"layers_done": 4, "layers_total": 4} for j in jobs)
    assert sample(server, "quantgate_jobs", state="succeeded") == 2
    assert sample(server, "quantgate_job_duration_seconds_count", state="succeeded") == 2
    assert (sample(server, "quantgate_job_duration_seconds_sum", state="succeeded") or 0) > 0


def test_progress_is_visible_while_running_and_cancel_stops_it(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QUANT_S", "20")
    monkeypatch.setenv("FAKE_LAYERS", "10")
    server = gateway()
    build = httpx.post(server.url + "/admin/variants/tiny/gptq/build").json()
    job_id = build["job"]["id"]
    deadline = time.monotonic() + 15
    while True:
        job = httpx.get(f"{server.url}/admin/jobs/{job_id}").json()
        if job["state"] == "running" and (job["progress"]["layers_done"] or 0) >= 1:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["progress"]["layers_total"] == 10
    assert sample(server, "quantgate_job_layers_total", model="tiny", variant="gptq") == 10
    cancelled = httpx.post(f"{server.url}/admin/jobs/{job_id}/cancel").json()
    assert cancelled["state"] == "cancelled"
    card = next(
        c for c in httpx.get(server.url + "/v1/models").json()["data"] if c["id"] == "tiny:gptq"
    )
    assert card["quantgate"]["state"] == "failed" and "cancelled" in card["quantgate"]["error"]
    again = httpx.post(f"{server.url}/admin/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_already_finished"
    assert "already finished (cancelled)" in again.json()["error"]["message"]
    assert httpx.post(f"{server.url}/admin/jobs/nope/cancel").status_code == 404


def test_a_finished_job_is_not_cancelled(gateway: Start) -> None:
    server = gateway()
    job_id = httpx.post(server.url + "/admin/variants/tiny/gptq/build").json()["job"]["id"]
    deadline = time.monotonic() + 15
    while httpx.get(f"{server.url}/admin/jobs/{job_id}").json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the build did not finish"
        time.sleep(0.05)
    refused = httpx.post(f"{server.url}/admin/jobs/{job_id}/cancel")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "job_already_finished"
    assert error["message"] == (
        f"job {job_id} (tiny:gptq) already finished (succeeded); there is nothing to cancel"
    )
    assert httpx.get(f"{server.url}/admin/jobs/{job_id}").json()["state"] == "succeeded"


def test_bad_recipe_is_refused_before_any_work(
    gateway: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = gateway(more_variants="      wide: {method: rtn, group_size: 512}\n")
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "tiny:wide"})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "invalid_recipe"
    assert "group_size 512 does not divide the input features of q_proj (256)" in error["message"]
    (job,) = _jobs(server)
    assert (job["state"], job["stage"], job["pid"]) == ("failed", "precheck", None)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"job {job['id']} failed its check before it ran") for m in logged)
    assert any(m.startswith("tiny:wide not brought up (failed): quantization") for m in logged)
