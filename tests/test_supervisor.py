"""Replicas under supervision, on real sockets: the fake vLLM started by the real launcher.

The same behaviours are shown on real vLLM in tests/test_demo_path.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import httpx
import pytest

from conftest import LiveServer, free_port
from serving.hardware import Gpu, Hardware

Start = Callable[..., LiveServer]
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def backends(server: LiveServer) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = httpx.get(server.url + "/admin/backends").json()["data"]
    return rows


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_two_replicas_share_the_load(gateway: Start) -> None:
    server = gateway(serve=", replicas: 2")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=120).is_success
    wait_for(lambda: [r["state"] for r in backends(server)] == ["ready", "ready"], timeout=120)
    for _ in range(6):
        assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=120).is_success
    rows = backends(server)
    assert len({r["port"] for r in rows}) == 2
    # a lease is released after the last byte went out, so the client may read the answer a
    # moment before in_flight drops: poll, as a loaded machine widens that moment
    wait_for(lambda: [r["in_flight"] for r in backends(server)] == [0, 0])


def test_killed_replica_is_restarted_and_no_request_fails(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TTFT_S", "0.05")
    server = gateway(serve=", replicas: 2")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    # the first answer needs one ready replica; the claim is about a second one taking over
    wait_for(lambda: [r["state"] for r in backends(server)] == ["ready", "ready"])
    victim = backends(server)[0]

    async def load() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> int:
                await asyncio.sleep(i * 0.01)
                r = await client.post(server.url + "/v1/chat/completions", json=CHAT)
                return r.status_code

            tasks = [asyncio.create_task(one(i)) for i in range(120)]
            await asyncio.sleep(0.2)
            os.kill(int(str(victim["pid"])), signal.SIGKILL)
            return await asyncio.gather(*tasks)

    statuses = asyncio.run(load())
    assert statuses == [200] * 120
    wait_for(lambda: backends(server)[0]["state"] == "ready")
    row = backends(server)[0]
    assert row["restarts"] == 1 and row["pid"] != victim["pid"]
    text = httpx.get(server.url + "/metrics").text
    assert "quantgate_upstream_retries_total" in text


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an unreaped zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_replica_leaves_no_engine_process_behind(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ENGINE_CHILD", "1")  # like vLLM's EngineCore, in the server's group
    server = gateway()
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    (victim,) = backends(server)
    found = re.search(r"engine pid (\d+)", Path(str(victim["log"])).read_text())
    assert found is not None
    engine = int(found.group(1))
    assert running(engine)
    os.kill(int(str(victim["pid"])), signal.SIGKILL)
    wait_for(lambda: backends(server)[0]["restarts"] == 1)
    wait_for(lambda: not running(engine))


def test_crash_loop_stops_after_the_restart_limit(
    gateway: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    server = gateway(serve=", max_restarts: 2")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    monkeypatch.setenv("FAKE_EXIT_AT_START", "1")  # every restart now fails at start
    os.kill(int(str(backends(server)[0]["pid"])), signal.SIGKILL)
    wait_for(lambda: backends(server)[0]["state"] == "failed", timeout=40)
    row = backends(server)[0]
    assert row["restarts"] == 2
    assert "crashed 2 times" in str(row["error"])
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 502 and "every replica" in r.json()["error"]["message"]
    assert "/admin/variants/tiny/base/build retries it" in r.json()["error"]["message"]
    assert [b["state"] for b in backends(server)] == ["failed"]  # a request restarts nothing
    monkeypatch.delenv("FAKE_EXIT_AT_START")
    retried = httpx.post(server.url + "/admin/variants/tiny/base/build", timeout=30)
    assert retried.status_code == 202 and retried.json()["job"] is None  # built: no job
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    rows = backends(server)
    assert [(b["index"], b["state"], b["restarts"]) for b in rows] == [(0, "ready", 0)]


def test_a_start_and_a_request_during_the_build_bring_up_one_replica(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin start and a request arriving while the build runs share one bring-up: one
    vLLM, none left running outside the variant's replicas."""
    monkeypatch.setenv("FAKE_QUANT_S", "1.5")
    server = gateway()
    url = server.url + "/admin/variants/tiny/gptq/start"
    body = {**CHAT, "model": "tiny:gptq"}

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            start = asyncio.create_task(client.post(url))
            await asyncio.sleep(0.3)
            asked = await client.post(server.url + "/v1/chat/completions", json=body)
            return await start, asked

    started, asked = asyncio.run(both())
    assert started.json()["state"] == "ready" and asked.is_success, asked.text
    assert [(b["variant"], b["index"]) for b in backends(server)] == [("gptq", 0)]
    logs = Path(str(backends(server)[0]["log"])).parent
    assert [p.name.split("-")[2] for p in logs.glob("tiny-gptq-r*.log")] == ["r0"]


def test_idle_stop_then_cold_start(gateway: Start) -> None:
    server = gateway(serve=", idle_stop_s: 1")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    pid = backends(server)[0]["pid"]
    wait_for(lambda: backends(server) == [], timeout=10)
    card = next(c for c in httpx.get(server.url + "/v1/models").json()["data"] if c["id"] == "tiny")
    assert card["quantgate"]["state"] == "built"
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    assert backends(server)[0]["pid"] != pid


def test_admin_scale_stop_and_start(gateway: Start) -> None:
    server = gateway()
    url = server.url + "/admin/variants/tiny/base"
    assert httpx.post(url + "/scale", json={"replicas": 2}, timeout=30).json()["state"] == "ready"
    assert len(backends(server)) == 2
    assert httpx.post(url + "/scale", json={"replicas": 1}, timeout=30).is_success
    assert len(backends(server)) == 1
    assert httpx.post(url + "/stop", timeout=30).json()["state"] == "built"
    assert backends(server) == []
    assert httpx.post(url + "/start", timeout=30).json()["state"] == "ready"
    refused = httpx.post(url + "/scale", json={"replicas": -1})
    assert refused.status_code == 400  # an OpenAI-style body, not FastAPI's 422
    assert refused.json()["error"]["param"] == "replicas"


def test_port_in_use_is_a_clear_error(gateway: Start) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = gateway(serve=f", base_port: {port}")
        r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 502
    assert f"port {port} (base_port + 0) is already in use" in r.json()["error"]["message"]


def test_more_gpus_than_exist_is_a_clear_error(gateway: Start) -> None:
    one_gpu = Hardware("cuda", gpus=(Gpu(0, "H100", 90, 81_559),))
    server = gateway(hardware=one_gpu, serve=", tensor_parallel_size: 2")
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "insufficient_resources"
    assert "tensor_parallel_size 2 needs 2 GPUs; this machine has 1" in error["message"]
    [row] = backends(server)  # nothing was started, nothing retries
    assert (row["state"], row["pid"], row["restarts"]) == ("failed", None, 0)


def test_a_starting_replica_is_not_idle(gateway: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_START_DELAY_S", "2")
    server = gateway(serve=", idle_stop_s: 0.5")
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200, r.text


def test_replica_states_are_exported_as_metrics(gateway: Start) -> None:
    server = gateway(serve=", replicas: 2")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    wait_for(lambda: [r["state"] for r in backends(server)] == ["ready", "ready"])
    text = httpx.get(server.url + "/metrics").text
    assert 'quantgate_replicas{model="tiny",state="ready",variant="base"} 2.0' in text
    assert 'quantgate_circuit_open_replicas{model="tiny",variant="base"} 0.0' in text


def test_circuit_breaker_opens_then_half_opens() -> None:
    from serving.replica import Replica, ReplicaState, RestartPolicy, unlaunchable

    now = [1000.0]
    r = Replica(0, unlaunchable, unlaunchable, RestartPolicy(), clock=lambda: now[0])
    r.state = ReplicaState.READY
    for _ in range(2):
        r.record_failure(threshold=3, open_s=10)
    assert r.routable and r.circuit == "closed"
    r.record_failure(threshold=3, open_s=10)
    assert not r.routable and r.circuit == "open"
    now[0] += 10
    assert r.routable and r.circuit == "half-open"  # one request may try it
    r.record_failure(threshold=3, open_s=10)
    assert not r.routable  # and one more failure shuts it again
    now[0] += 10
    r.record_success()
    assert r.routable and r.circuit == "closed"


def test_a_half_open_circuit_lets_one_request_through_at_a_time() -> None:
    from serving.pool import VariantPool
    from serving.replica import Replica, ReplicaState, RestartPolicy, unlaunchable

    now = [1000.0]
    r = Replica(0, unlaunchable, unlaunchable, RestartPolicy(), clock=lambda: now[0])
    r.state = ReplicaState.READY
    pool = VariantPool("tiny:base", unlaunchable, unlaunchable, RestartPolicy())
    pool.replicas = [r]
    earlier = r.acquire()  # sent while the circuit was closed: not a trial
    for _ in range(3):
        r.record_failure(threshold=3, open_s=10)
    now[0] += 10
    picked = [p for p in (pool.pick() for _ in range(20)) if p is not None and p.acquire()]
    assert len(picked) == 1 and r.in_flight == 2  # one trial; the other 19 found none
    assert pool.open_for() == 0.0  # what a request is told: one is trying it now
    r.release(earlier)
    assert not r.routable  # a request from before does not end the trial
    r.release(True)  # the trial ended without an answer (the client went away)
    assert r.routable and r.circuit == "half-open"
    trial = r.acquire()
    r.record_success()
    r.release(trial)
    assert r.circuit == "closed" and [r.acquire() for _ in range(3)] == [False] * 3


def test_a_failed_pool_reports_why_with_the_log_tail() -> None:
    """What a request gets when it finds every replica failed before the bring-up recorded
    why: the last replica's own failure, vLLM's log tail included."""
    from serving.errors import BackendFailed
    from serving.pool import VariantPool
    from serving.replica import Replica, ReplicaState, RestartPolicy, unlaunchable

    pool = VariantPool("tiny:base", unlaunchable, unlaunchable, RestartPolicy())
    started, crashed = (Replica(i, unlaunchable, unlaunchable, RestartPolicy()) for i in (0, 1))
    pool.replicas = [crashed, started]
    started.state = ReplicaState.READY
    crashed.state = ReplicaState.FAILED
    crashed.error = "vLLM for tiny:base exited with code 3 while starting"
    crashed.failure = BackendFailed(crashed.error, log_tail="ValueError: bad argument")
    assert pool.failure() is None  # one replica still serves
    started.state, started.error = ReplicaState.FAILED, "crashed 2 times within 600 s"
    assert str(pool.failure()) == "crashed 2 times within 600 s"  # no exception: its error
    pool.replicas = [started, crashed]  # the last one's failure, with its log tail
    failure = pool.failure()
    assert failure is crashed.failure and failure.log_tail == "ValueError: bad argument"


def test_a_start_cancelled_by_a_stopping_gateway_is_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway stopping while vLLM starts: the replica is stopped, not failed, no error
    line, and the process is gone."""
    from serving.launcher import LaunchSpec, VllmServer
    from serving.replica import Replica, ReplicaState, RestartPolicy

    spec = LaunchSpec(tmp_path, ("tiny",), free_port(), tmp_path / "vllm.log")
    servers: list[VllmServer] = []

    def launch(s: LaunchSpec) -> VllmServer:
        servers.append(VllmServer(s, Path(sys.executable)))
        return servers[-1]

    async def scenario() -> Replica:
        replica = Replica(0, lambda: spec, launch, RestartPolicy(startup_timeout_s=30))
        task = asyncio.create_task(replica.start())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return replica

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with mock.patch.object(LaunchSpec, "argv", lambda self, python: sleeper):
        replica = asyncio.run(scenario())
    assert replica.state is ReplicaState.STOPPED and replica.error is None
    assert servers[0].pid is not None and not servers[0].alive()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_hung_replica_is_restarted(gateway: Start, caplog: pytest.LogCaptureFixture) -> None:
    """A stopped process takes connections and never answers, as a wedged vLLM does: its
    /health goes unanswered, the replica is killed and restarted, and requests succeed."""
    server = gateway(serve=", health_check: {interval_s: 0.2, timeout_s: 0.5, failures: 2}")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    (victim,) = backends(server)
    pid = int(str(victim["pid"]))
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: backends(server)[0]["restarts"] == 1, timeout=30)
        wait_for(lambda: backends(server)[0]["state"] == "ready", timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    (row,) = backends(server)
    assert row["pid"] != pid and not running(pid)
    assert "/health went unanswered 2 times in a row" in str(row["error"])
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success
    assert any("killing it" in r.getMessage() for r in caplog.records)


def test_a_replica_not_serving_is_not_probed() -> None:
    """Asleep, waking or draining, a replica that does not answer is not counted hung."""
    from serving.liveness import until_hung
    from serving.manifest.serve import HealthCheck

    async def scenario() -> tuple[bool, str]:
        done = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await done.wait()  # takes the connection, never answers
            writer.close()

        listener = await asyncio.start_server(silent, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        probe = HealthCheck(interval_s=0.05, timeout_s=0.1, failures=2)
        serving = [False]
        task = asyncio.create_task(until_hung(url, probe, lambda: serving[0]))
        await asyncio.sleep(0.6)
        asleep_hung = task.done()
        serving[0] = True
        found = await asyncio.wait_for(task, 5)
        done.set()
        listener.close()
        await asyncio.sleep(0.1)
        return asleep_hung, found

    asleep_hung, found = asyncio.run(scenario())
    assert not asleep_hung
    assert found.startswith("/health went unanswered 2 times in a row (ReadTimeout")
