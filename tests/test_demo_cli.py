"""`quantgate demo`: its helpers on a live gateway (fake vLLM: pick, job and replica lines,
metrics), and the whole command on a manifest of fake upstreams: admin and client keys, and
an error answer as one line with exit 1 (never a traceback)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import LiveServer, fake_upstream, free_port
from gateway.cli import demo, main

AUTH = """
auth:
  keys:
    - {name: demo, key_env: DEMO_CLIENT_KEY, models: ["*"]}
"""


def test_demo_picks_a_servable_variant_and_prints_what_happened(
    gateway: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = gateway()
    at = demo.Gateway(server.url)
    assert demo._pick(at, "auto") == "tiny:gptq"  # first quantized variant, not base
    body = {"model": "tiny:gptq", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).is_success
    demo._print_steps(at, "tiny:gptq", demo._base_of(at, "tiny:gptq"))
    demo._print_metrics(at, "tiny:gptq")
    out = capsys.readouterr().out
    assert "tiny:gptq: quantization job" in out and "succeeded" in out
    assert "vLLM replica 0" in out and "ready in" in out
    assert (
        'quantgate_requests_total{endpoint="chat",model="tiny",status="200",variant="gptq"}' in out
    )


def test_admin_routes_it_may_not_read_are_named_not_fatal(
    gateway: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = gateway(admin_key="the-admin-key")
    demo._print_steps(demo.Gateway(server.url, admin_key="wrong"), "tiny:gptq", None)
    assert "not shown: /admin/variants answered 401: a valid admin key" in capsys.readouterr().out
    assert demo._doing(demo.Gateway(server.url), "tiny:gptq") == "waiting"


@pytest.fixture
def paris() -> Iterator[str]:
    """An upstream that answers the demo's question right."""
    with fake_upstream("paris", FAKE_REPLY="The capital of France is Paris.") as url:
        yield url


def demo_manifest(tmp_path: Path, upstream: str, more: str = "") -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(f"""
cache_dir: {tmp_path / "cache"}
models:
  up:
    default_variant: main
    variants:
      main: {{method: none, upstream: {{url: "{upstream}", model: paris}}}}
{more}""")
    return path


def run_demo(manifest: Path, model: str = "up:main") -> int:
    return main(["demo", str(manifest), "--model", model, "--port", str(free_port())])


def test_with_an_admin_key_the_demo_reads_admin_routes_with_it(
    tmp_path: Path, paris: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTGATE_ADMIN_KEY", "the-admin-key")  # the gateway's and the demo's
    assert run_demo(demo_manifest(tmp_path, paris)) == 0
    out, err = capfd.readouterr()
    assert "up:main answered right (Paris)" in out
    assert "how long each step took" in out and "not shown" not in out
    assert 'quantgate_requests_total{endpoint="chat",model="up",status="200"' in out
    assert "Traceback" not in err


def test_a_manifest_with_keys_is_asked_with_its_client_key(
    tmp_path: Path, paris: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_CLIENT_KEY", "k-demo")
    assert run_demo(demo_manifest(tmp_path, paris, AUTH)) == 0
    out, err = capfd.readouterr()
    assert "up:main answered right (Paris)" in out and "Traceback" not in err


def test_a_manifest_with_keys_and_no_key_set_is_refused_at_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEMO_CLIENT_KEY", raising=False)
    t0 = time.monotonic()
    assert run_demo(demo_manifest(tmp_path, "http://127.0.0.1:1", AUTH)) == 2
    assert time.monotonic() - t0 < 2  # no gateway was started
    err = capfd.readouterr().err
    assert err.startswith("quantgate demo: ") and "DEMO_CLIENT_KEY: set it" in err
    assert len(err.strip().splitlines()) == 1


def test_an_error_answer_is_one_line_with_its_status_and_exit_1(
    tmp_path: Path, paris: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run_demo(demo_manifest(tmp_path, paris), model="up:nope") == 1
    err = capfd.readouterr().err
    assert "quantgate demo: 404 " in err and "up:nope" in err
    assert "Traceback" not in err
