"""Shared fixtures: a model folder, a fake vLLM interpreter, a running gateway on a real socket."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import GatewaySettings
from serving.errors import ManifestError
from serving.fleet import Fleet, open_fleet
from serving.hardware import Hardware
from serving.manifest import Manifest, parse_manifest

FAKES = Path(__file__).parent / "fakes"
ROOT = Path(__file__).resolve().parent.parent
AVX512 = Hardware("cpu", frozenset({"avx2", "avx512f"}))
LLAMA_CONFIG = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_attention_heads": 4,
    "head_dim": 64,
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder that looks like a checkpoint to the gateway (the fakes need nothing more)."""
    path = tmp_path / "models" / "tiny"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    return path


@pytest.fixture
def fake_vllm_python(tmp_path: Path) -> Path:
    """An interpreter whose ``-m vllm.entrypoints.openai.api_server`` is the fake server."""
    script = tmp_path / "fake-vllm-python"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{FAKES}" exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


def fake_worker(spec: Path) -> list[str]:
    return [sys.executable, str(FAKES / "fake_quantizer.py"), str(spec)]


def write_manifest(
    tmp_path: Path,
    model_dir: Path,
    on_missing: str = "wait",
    serve: str = "",
    more_variants: str = "",
) -> Manifest:
    restarts = "" if "max_restarts" in serve else ", max_restarts: 3"
    text = f"""
version: 1
cache_dir: {tmp_path / "cache"}
models:
  tiny:
    source: {model_dir}
    default_variant: base
    on_missing: {{action: {on_missing}}}
    serve: {{startup_timeout_s: 30{restarts}{serve}}}
    variants:
      base: {{method: none}}
      gptq: {{method: gptq, bits: 4}}
      awq: {{method: awq, bits: 4}}
{more_variants}"""
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    return parse_manifest(text, path)


def manifest_errors(text: str, path: Path = Path("/m/bad.yaml")) -> list[str]:
    """The ``file:line: field: message`` lines a manifest that must fail is refused with."""
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, path)
    return [str(issue) for issue in info.value.issues]


@dataclass
class ServedGateway:
    """A real ``quantgate serve`` process (real jobs, real vLLM) on a manifest file."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.url, name, **labels)


@contextlib.contextmanager
def serve_manifest(manifest: Path, log: Path, *args: str) -> Iterator[ServedGateway]:
    """Start ``quantgate serve MANIFEST [ARGS]`` on a free port, wait for /health (60 s), and
    stop its whole process group (vLLM included) afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", str(manifest), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = ServedGateway(f"http://127.0.0.1:{port}", log, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(served.url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.2)
        yield served
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(90)


@contextlib.contextmanager
def fake_upstream(*names: str, **env: str) -> Iterator[str]:
    """The fake OpenAI server as an already-running upstream serving ``names``, with knobs
    ``env`` (``FAKE_REPLY``, ``FAKE_API_KEY``, ...); its base URL, stopped afterwards."""
    with fake_upstream_process(*names, **env) as (url, _):
        yield url


@contextlib.contextmanager
def fake_upstream_process(*names: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``fake_upstream``, with its process (to stop it with a signal)."""
    port = free_port()
    args = ["--model", "x", "--served-model-name", *names, "--port", str(port)]
    environ = {"PYTHONPATH": str(FAKES), "PATH": "/usr/bin:/bin", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args], env=environ
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "the fake upstream exited"
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the fake upstream did not come up"
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(10)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples with these labels, read from ``url``/metrics."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def make_fleet(manifest: Manifest, vllm_python: Path, hardware: Hardware = AVX512) -> Fleet:
    return open_fleet(manifest, fake_worker, vllm_python, hardware)


def gateway_on(
    text: str, path: Path, vllm_python: Path, watch_s: float | None = None
) -> LiveServer:
    """A live gateway (real fleet, fake vLLM) on manifest ``text``, written to ``path``, which
    it reloads from (``POST /admin/reload``, ``watch_s``); enter it with ``with``."""
    path.write_text(text)
    manifest = parse_manifest(text, path)
    registry = CollectorRegistry()
    app = create_app(make_fleet(manifest, vllm_python), GatewaySettings(), registry, path, watch_s)
    return LiveServer(app, registry)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """A real uvicorn serving ``app`` in a thread, for tests with real sockets."""

    def __init__(self, app: FastAPI, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


ServeFleet = Callable[[Manifest, Hardware, GatewaySettings], LiveServer]


@pytest.fixture
def live_gateway(fake_vllm_python: Path) -> Iterator[ServeFleet]:
    """Serve a manifest through the real fleet (fake vLLM) and gateway on a real socket;
    every server started is stopped after the test."""
    servers: list[LiveServer] = []

    def start(manifest: Manifest, hardware: Hardware, settings: GatewaySettings) -> LiveServer:
        fleet = make_fleet(manifest, fake_vllm_python, hardware)
        registry = CollectorRegistry()
        server = LiveServer(create_app(fleet, settings, registry), registry).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


@pytest.fixture
def gateway(tmp_path: Path, model_dir: Path, live_gateway: ServeFleet) -> Callable[..., LiveServer]:
    """Start a gateway on a manifest of the fake model; returns the live server."""

    def start(
        on_missing: str = "wait",
        hardware: Hardware = AVX512,
        serve: str = "",
        more_variants: str = "",
        **settings: object,
    ) -> LiveServer:
        manifest = write_manifest(tmp_path, model_dir, on_missing, serve, more_variants)
        return live_gateway(manifest, hardware, GatewaySettings.model_validate(settings))

    return start


@dataclass
class LocustRun:
    """One headless ``loadtests/run.sh`` run: exit code, console output, CSV rows by entry."""

    returncode: int
    output: str
    stats: dict[tuple[str, str], dict[str, str]]  # (Type, Name) -> CSV row
    out: Path

    def requests(self) -> int:
        return sum(int(r["Request Count"]) for (kind, _), r in self.stats.items() if kind == "POST")


def require_locust() -> None:
    if not (ROOT / ".venv-load" / "bin" / "locust").is_file():
        pytest.fail("no Locust in .venv-load: run `make install-load` (make test and make unit do)")


def run_locust(host: str, out: Path, *args: str, users: int = 2, duration: str = "3s") -> LocustRun:
    """Run Locust from ``.venv-load`` (its own environment) through ``loadtests/run.sh``."""
    require_locust()
    command = [str(ROOT / "loadtests" / "run.sh"), "--host", host, "--out", str(out)]
    command += ["--users", str(users), "--duration", duration, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if not (out / "stats_stats.csv").is_file():
        pytest.fail(f"Locust wrote no statistics:\n{done.stdout}{done.stderr}")
    with (out / "stats_stats.csv").open() as f:
        stats = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    return LocustRun(done.returncode, done.stdout + done.stderr, stats, out)


@pytest.fixture
def logging_kept() -> Iterator[None]:
    """uvicorn's loggers as a fresh ``quantgate serve`` process has them (servers that other
    tests ran configured them); afterwards, the process's logging as it was (pytest's own)."""
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    loggers = [logging.getLogger(n) for n in names]
    states = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers[:], lg.level, lg.propagate = [], logging.NOTSET, True
    yield
    logging.captureWarnings(False)
    root.handlers[:], root.level = kept
    for lg, (handlers, level, propagate) in zip(loggers, states, strict=True):
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
