"""``serve.optimize_for: auto`` through the gateway, on the fake vLLM: the kernel follows the
requests in flight, switching by starting a replica beside the old one and draining the old.

The fake's kernels cross over as Marlin and Machete do on Hopper (FAKE_KERNEL_ITL_S
``base+per_stream``): Marlin decodes twice as fast alone and falls behind as requests pile up.
Every request sent while switching must succeed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LiveServer, metric
from serving.hardware import Gpu, Hardware

Start = Callable[..., LiveServer]
H100 = Hardware("cuda", gpus=(Gpu(0, "NVIDIA H100 80GB HBM3", 90, 81_559),))
MACHETE, MARLIN = "MacheteLinearKernel", "MarlinLinearKernel"
KEY = "NVIDIA H100 80GB HBM3|vllm 0.0.0+fake"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 48}
AUTO = ", optimize_for: auto, kernel_switch: {window_s: 2, hold_s: 0}"


@pytest.fixture
def crossing_kernels(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A GPTQ W4A16 checkpoint whose two kernels cross over between 1 and 64 streams."""
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("FAKE_KERNELS", f"{MACHETE},{MARLIN}")
    monkeypatch.setenv("FAKE_KERNEL_ITL_S", f"{MACHETE}=0.001+0.00001,{MARLIN}=0.0005+0.0001")
    return model_dir


def status(server: LiveServer) -> dict[str, Any]:
    rows = httpx.get(server.url + "/admin/variants").json()["data"]
    row: dict[str, Any] = next(r for r in rows if r["variant"] == "base")
    return row


@contextmanager
def traffic(server: LiveServer, streams: int) -> Iterator[Counter[int]]:
    """``streams`` clients sending chat requests back to back; their status codes counted."""
    codes: Counter[int] = Counter()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                codes[c.post("/v1/chat/completions", json=CHAT).status_code] += 1

    threads = [threading.Thread(target=client) for _ in range(streams)]
    for t in threads:
        t.start()
    try:
        yield codes
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def load(row: dict[str, Any]) -> dict[str, Any]:
    """What the follower says of the variant (None until its first look)."""
    seen: dict[str, Any] = row["kernel"]["load"] or {"switches": 0, "last": None}
    return seen


def wait_for(server: LiveServer, done: Callable[[dict[str, Any]], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not done(load(row := status(server))):
        assert time.monotonic() < deadline, row["kernel"]
        time.sleep(0.2)


def started(gateway: Start, serve: str = "") -> LiveServer:
    """A gateway serving the variant with ``optimize_for: auto`` (and ``serve``), its kernels
    measured and a first request answered."""
    server = gateway(hardware=H100, serve=f"{serve}{AUTO}")
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    return server


def drive(server: LiveServer, streams: int, switches: int) -> tuple[dict[str, Any], Counter[int]]:
    """``streams`` clients until the variant has made ``switches`` switches (and a second
    more); its status then, and the clients' status codes."""
    with traffic(server, streams) as codes:
        wait_for(server, lambda seen: seen["switches"] == switches, within_s=60)
        time.sleep(1.0)  # requests keep going to the new replica
    return status(server), codes


def test_single_streams_get_marlin_and_many_streams_machete_without_a_failed_request(
    gateway: Start, crossing_kernels: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.fleet")
    server = started(gateway, ", gpu_memory_utilization: 0.45")
    row = status(server)
    measured = row["kernel"]["measured"][KEY]["candidates"]
    assert measured[MARLIN]["tok_s_1"] > measured[MACHETE]["tok_s_1"]  # they do cross over
    assert measured[MARLIN]["tok_s_64"] < measured[MACHETE]["tok_s_64"]
    assert row["kernel"]["kernel"] == MACHETE  # balanced at the first launch: the default
    assert row["kernel"]["optimize_for"] == "auto"

    row, alone = drive(server, streams=1, switches=1)
    assert row["kernel"]["kernel"] == MARLIN, row["kernel"]
    assert row["kernel"]["env"] == {"VLLM_DISABLED_KERNELS": MACHETE}
    [replica] = row["replicas"]
    assert f"Using {MARLIN}" in Path(replica["log"]).read_text()
    assert "switched to MarlinLinearKernel expected +" in row["kernel"]["load"]["last"]

    row, crowd = drive(server, streams=24, switches=2)
    assert row["kernel"]["kernel"] == MACHETE, row["kernel"]
    [replica] = row["replicas"]
    assert f"Using {MACHETE}" in Path(replica["log"]).read_text()
    assert row["kernel"]["load"]["streams_per_replica"] is None  # counted afresh after a switch

    assert set(alone) == {200} and alone[200] > 10, alone  # none failed while switching
    assert set(crowd) == {200} and crowd[200] > 24, crowd
    backends = httpx.get(server.url + "/admin/backends").json()
    assert list(backends["placement"]) == [f"tiny:base#{replica['index']}"]
    labels = {"model": "tiny", "variant": "base"}
    assert metric(server.url, "quantgate_kernel_switches_total", **labels) == 2
    assert metric(server.url, "quantgate_variant_kernel", kernel=MACHETE, **labels) == 1
    assert metric(server.url, "quantgate_variant_kernel", kernel=MARLIN, **labels) == 0
    logged = [r.getMessage() for r in caplog.records if "optimize_for auto" in r.getMessage()]
    seen = [re.search(r"switching to MarlinLinearKernel .* at ([\d.]+) streams", m) for m in logged]
    loads = [float(x.group(1)) for x in seen if x]
    assert loads and max(loads) <= 1.0, logged  # one client: at most 1 in flight per replica
    assert any("switched to MacheteLinearKernel" in m for m in logged), logged


def test_a_restart_begins_on_the_kernel_the_load_was_followed_to_last(
    gateway: Start, crossing_kernels: Path, tmp_path: Path
) -> None:
    server = started(gateway, ", gpu_memory_utilization: 0.45")
    drive(server, streams=1, switches=1)
    assert httpx.post(server.url + "/admin/variants/tiny/base/stop", timeout=60).is_success
    tuned = sorted((tmp_path / "cache" / ".logs").glob("*-tune-*.log"))
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    row = status(server)
    assert row["kernel"]["kernel"] == MARLIN  # not balanced's Machete
    assert f"the kernel auto followed the load to last: {MARLIN}" in row["kernel"]["reason"]
    assert row["kernel"]["measured"][KEY]["followed"] == MARLIN
    assert sorted((tmp_path / "cache" / ".logs").glob("*-tune-*.log")) == tuned  # not measured


def test_on_a_full_gpu_it_switches_by_sleep_and_back_by_waking_the_standby(
    gateway: Start, crossing_kernels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS_FILE", str(calls))
    server = started(gateway)  # gpu_memory_utilization 0.9: one fits
    [first] = status(server)["replicas"]

    row, alone = drive(server, streams=1, switches=1)
    assert row["kernel"]["kernel"] == MARLIN
    assert "by sleep (a new replica)" in row["kernel"]["load"]["last"]
    assert row["kernel"]["load"]["standby"] == {"kernel": MACHETE, "state": "asleep"}
    [marlin] = row["replicas"]
    assert f"Using {MARLIN}" in Path(marlin["log"]).read_text()

    row, crowd = drive(server, streams=24, switches=2)
    assert row["kernel"]["kernel"] == MACHETE
    assert "by sleep (the standby woken)" in row["kernel"]["load"]["last"]
    assert row["kernel"]["load"]["standby"] == {"kernel": MARLIN, "state": "asleep"}
    [again] = row["replicas"]
    assert (again["log"], again["pid"]) == (first["log"], first["pid"])  # woken, not started
    assert calls.read_text().splitlines().count("wake_up") == 1
    assert "asleep-hit" not in calls.read_text()  # no request reached a sleeping engine
    assert set(alone) == {200} and set(crowd) == {200}, (alone, crowd)
    assert httpx.get(server.url + "/admin/backends").json()["placement"] == {
        f"tiny:base#{again['index']}": [0]
    }


def test_a_new_kernel_that_does_not_start_leaves_the_old_replica_serving_woken(
    gateway: Start, crossing_kernels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = started(gateway)
    [first] = status(server)["replicas"]
    monkeypatch.setenv("FAKE_EXIT_AT_START", "1")  # every vLLM started from now on dies
    with traffic(server, streams=1) as codes:
        wait_for(server, lambda seen: "stayed on" in (seen["last"] or ""), 60)
        time.sleep(1.0)
    row = status(server)
    assert row["kernel"]["kernel"] == MACHETE and row["kernel"]["load"]["switches"] == 0
    assert row["kernel"]["env"] == {}  # vLLM's default again, as before the try
    [again] = row["replicas"]
    assert (again["pid"], again["state"]) == (first["pid"], "ready")  # woken, not restarted
    assert row["kernel"]["load"]["standby"] is None
    assert set(codes) == {200}, codes


def test_without_room_beside_it_the_variant_stays_on_its_kernel_and_says_why(
    gateway: Start, crossing_kernels: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.fleet")
    # two replicas fill the GPU; a variant of more than one replica does not switch by sleep
    server = started(gateway, ", replicas: 2, gpu_memory_utilization: 0.45")
    with traffic(server, streams=1) as codes:
        wait_for(server, lambda seen: "no room" in (seen["last"] or ""), 60)
        time.sleep(3.0)  # a few more windows: not tried again
    row = status(server)
    assert row["kernel"]["kernel"] == MACHETE and row["kernel"]["load"]["switches"] == 0
    assert "stayed on MacheteLinearKernel" in row["kernel"]["load"]["last"]
    assert [r["state"] for r in row["replicas"]] == ["ready", "ready"]
    assert set(codes) == {200}, codes
    placement = httpx.get(server.url + "/admin/backends").json()["placement"]
    assert placement == {"tiny:base#0": [0], "tiny:base#1": [0]}
    tries = [r for r in caplog.records if "switching to" in r.getMessage()]
    assert len(tries) == 1


def test_on_a_cpu_auto_says_it_follows_nothing_and_serves(
    gateway: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.fleet")
    server = gateway(serve=AUTO)  # the CPU: one kernel per scheme, nothing measured
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("optimize_for auto follows no load here (this is no GPU" in m for m in warned)
    assert status(server)["kernel"]["load"] is None
