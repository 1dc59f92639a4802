"""Reloading the manifest of a running gateway (real fleet, fake vLLM processes): a variant
added, one removed while it streams (the stream completes), one changed, an unchanged one kept
in the same process; a broken manifest refused while the old one keeps answering."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port, gateway_on, write_manifest
from serving.manifest import Manifest, load_manifest


def chat(client: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return client.post("/v1/chat/completions", json=body)


def pid(client: httpx.Client, variant: str) -> int:
    rows = client.get("/admin/backends").json()["data"]
    found: int = next(r["pid"] for r in rows if r["variant"] == variant)
    return found


def alive(process: int) -> bool:
    try:
        os.kill(process, 0)
    except ProcessLookupError:
        return False
    return True


def stream_in_background(url: str, out: dict[str, Any], started: threading.Event) -> None:
    body = {"model": "tiny:awq", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40, "stream": True}  # fmt: skip
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        out["status"], out["lines"] = r.status_code, []
        for line in r.iter_lines():
            out["lines"].append(line)
            started.set()


def test_reload_applies_a_diff_and_refuses_a_broken_manifest(
    tmp_path: Path,
    model_dir: Path,
    fake_vllm_python: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("FAKE_ITL_S", "0.05")  # 40 tokens: a 2 s stream
    write_manifest(tmp_path, model_dir)
    path = tmp_path / "manifest.yaml"
    server_of = gateway_on(path.read_text(), path, fake_vllm_python)
    with server_of as server, httpx.Client(base_url=server.url, timeout=60) as c:
        assert chat(c, "tiny:base").status_code == 200 and chat(c, "tiny:awq").status_code == 200
        base_pid, awq_pid = pid(c, "base"), pid(c, "awq")
        streamed: dict[str, Any] = {}
        started = threading.Event()
        reader = threading.Thread(target=stream_in_background, args=(server.url, streamed, started))
        reader.start()
        assert started.wait(10)

        text = path.read_text()
        new = text.replace("      awq: {method: awq, bits: 4}\n", "      rtn: {method: rtn}\n")
        path.write_text(
            new.replace("gptq: {method: gptq, bits: 4}", "gptq: {method: gptq, bits: 8}")
        )
        applied = c.post("/admin/reload")
        assert applied.status_code == 200, applied.text
        assert applied.json() == {"applied": True, "added": ["tiny:rtn"], "removed": ["tiny:awq"],
                                  "changed": ["tiny:gptq"], "kept": ["tiny:base"]}  # fmt: skip
        assert "manifest reload (POST /admin/reload) applied: added tiny:rtn" in caplog.text
        gone = chat(c, "tiny:awq")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"

        reader.join(30)  # the stream that was running on the removed variant completes
        assert streamed["status"] == 200 and "data: [DONE]" in streamed["lines"][-2:]
        assert sum('"content"' in line for line in streamed["lines"]) == 40
        deadline = time.monotonic() + 20
        while alive(awq_pid):  # then its vLLM drains and stops
            assert time.monotonic() < deadline, "the removed variant's vLLM kept running"
            time.sleep(0.1)

        assert pid(c, "base") == base_pid and chat(c, "tiny:base").status_code == 200
        assert chat(c, "tiny:rtn").status_code == 200  # built on demand, as any new variant

        path.write_text(new.replace("variants:", "variants:\n      base: {method: none}", 1))
        refused = c.post("/admin/reload")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "invalid_manifest" and "duplicate key 'base'" in error["message"]
        assert f"{path}:" in error["message"]
        assert chat(c, "tiny:base").status_code == 200 and pid(c, "base") == base_pid

    applied_n = server.registry.get_sample_value("quantgate_manifest_reloads_total",
                                                 {"result": "applied"})  # fmt: skip
    refused_n = server.registry.get_sample_value("quantgate_manifest_reloads_total",
                                                 {"result": "refused"})  # fmt: skip
    assert (applied_n, refused_n) == (1, 1)


def test_a_change_that_needs_a_restart_is_refused(
    tmp_path: Path, model_dir: Path, fake_vllm_python: Path
) -> None:
    write_manifest(tmp_path, model_dir)
    path = tmp_path / "manifest.yaml"
    with gateway_on(path.read_text(), path, fake_vllm_python) as server:
        path.write_text(path.read_text().replace("cache_dir: ", f"cache_dir: {tmp_path}/other#"))
        refused = httpx.post(server.url + "/admin/reload")
        assert refused.status_code == 409, refused.text
        assert "cache_dir changed" in refused.json()["error"]["message"]


def test_the_file_watch_reloads_a_changed_manifest(
    tmp_path: Path, model_dir: Path, fake_vllm_python: Path
) -> None:
    write_manifest(tmp_path, model_dir)
    path = tmp_path / "manifest.yaml"
    with gateway_on(path.read_text(), path, fake_vllm_python, watch_s=0.1) as server:
        path.write_text(path.read_text().replace("      awq: {method: awq, bits: 4}\n", ""))
        deadline = time.monotonic() + 10
        while "tiny:awq" in [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]:
            assert time.monotonic() < deadline, "the changed file was not reloaded"
            time.sleep(0.1)


def test_a_router_only_gateway_starts_without_environments_and_reloads_on_sighup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "upstreams.yaml"
    text = f"""
cache_dir: {tmp_path / "cache"}
models:
  ext:
    default_variant: a
    variants:
      a: {{method: none, upstream: {{url: "http://127.0.0.1:9/v1", model: m}}}}
"""
    path.write_text(text)
    port = free_port()
    env = {**os.environ, "QUANTGATE_VLLM_PYTHON": "/nonexistent/python",
           "QUANTGATE_QUANTIZER_PYTHON": "/nonexistent/python"}  # fmt: skip
    args = [sys.executable, "-m", "gateway.cli", "serve", str(path), "--port", str(port)]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, proc)
        path.write_text(
            text + '      b: {method: none, upstream: {url: "http://127.0.0.1:9", model: m}}\n'
        )
        proc.send_signal(signal.SIGHUP)

        def names() -> list[str]:
            return [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]

        wait_for(lambda: "ext:b" in names(), proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "manifest reload (SIGHUP) applied: added ext:b" in err, err[-3000:]


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_an_empty_manifest_serves_nothing_until_a_reload_adds_a_model(
    tmp_path: Path, fake_vllm_python: Path
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"version: 1\ncache_dir: {tmp_path / 'cache'}\n")
    with (
        gateway_on(path.read_text(), path, fake_vllm_python) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        assert c.get("/v1/models").json()["data"] == []
        assert chat(c, "ext").status_code == 404
        added = "models:\n  ext:\n    default_variant: a\n    variants:\n"
        added += '      a: {method: none, upstream: {url: "http://127.0.0.1:9"}}\n'
        path.write_text(path.read_text() + added)
        assert c.post("/admin/reload").json()["added"] == ["ext:a"]
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["ext", "ext:a"]


def test_a_rotated_key_file_is_read_again_by_the_watch(
    tmp_path: Path, fake_vllm_python: Path
) -> None:
    key = tmp_path / "team-a.key"
    key.write_text("sk-old\n")
    key.chmod(0o600)
    path = tmp_path / "m.yaml"
    path.write_text(f"""version: 1
cache_dir: {tmp_path / "cache"}
auth:
  keys: [{{name: team-a, key_file: {key}, models: ["*"]}}]
models:
  ext:
    default_variant: a
    variants:
      a: {{method: none, upstream: {{url: "http://127.0.0.1:9"}}}}
""")
    with (
        gateway_on(path.read_text(), path, fake_vllm_python, watch_s=0.1) as server,
        httpx.Client(base_url=server.url) as c,
    ):

        def models(token: str) -> int:
            return c.get("/v1/models", headers={"authorization": f"Bearer {token}"}).status_code

        assert (models("sk-old"), models("sk-new")) == (200, 401)
        key.write_text("sk-new\n")  # the Secret changed; the kubelet swapped the file
        deadline = time.monotonic() + 10
        while models("sk-new") != 200:
            assert time.monotonic() < deadline, "the rotated key was not read again"
            time.sleep(0.1)
        assert models("sk-old") == 401


def test_a_new_source_is_built_again_and_its_old_build_is_not_served(
    tmp_path: Path, model_dir: Path, fake_vllm_python: Path
) -> None:
    write_manifest(tmp_path, model_dir)
    path = tmp_path / "manifest.yaml"
    moved = tmp_path / "tiny-v2"
    shutil.copytree(model_dir, moved)
    with (
        gateway_on(path.read_text(), path, fake_vllm_python) as server,
        httpx.Client(base_url=server.url, timeout=60) as c,
    ):
        assert chat(c, "tiny:gptq").status_code == 200
        path.write_text(path.read_text().replace(f"source: {model_dir}", f"source: {moved}"))
        changed = c.post("/admin/reload").json()["changed"]
        assert sorted(changed) == ["tiny:awq", "tiny:base", "tiny:gptq"]
        assert chat(c, "tiny:gptq").status_code == 200
        jobs = [j for j in c.get("/admin/jobs").json()["data"] if j["variant"] == "gptq"]
        row = next(v for v in c.get("/admin/variants").json()["data"] if v["variant"] == "gptq")
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"]
    assert row["report"]["source"] == str(moved)


EXT = "models:\n  ext:\n    default_variant: a\n    variants:\n"
EXT += '      a: {method: none, upstream: {url: "http://127.0.0.1:9"}}\n'


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def model_ids(c: httpx.Client) -> list[str]:
    return [m["id"] for m in c.get("/v1/models").json()["data"]]


def test_an_unreadable_manifest_is_refused_and_the_watch_takes_the_fix(
    tmp_path: Path, fake_vllm_python: Path
) -> None:
    path = tmp_path / "m.yaml"
    head = f"version: 1\ncache_dir: {tmp_path / 'cache'}\n"
    with (
        gateway_on(head, path, fake_vllm_python, watch_s=0.1) as server,
        httpx.Client(base_url=server.url) as c,
    ):

        def refusals() -> float:
            labels = {"result": "refused"}
            return server.registry.get_sample_value("quantgate_manifest_reloads_total", labels) or 0

        for junk in (b"# caf\xe9\n", b"# a\x01b\n"):  # not UTF-8; a control character
            path.write_bytes(head.encode() + junk + EXT.encode())
            refused = c.post("/admin/reload")
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "invalid_manifest"
            assert f"{path}:3: " in refused.json()["error"]["message"]
        before = refusals()
        path.write_bytes(head.encode() + EXT.encode() + b"# caf\xe9\n")
        eventually(lambda: refusals() > before, "the watch did not try the changed file")
        path.write_text(head + EXT)
        eventually(lambda: model_ids(c) == ["ext", "ext:a"], "the watch stopped after a refusal")


def test_an_unexpected_reload_error_is_a_500_body_and_the_watch_goes_on(
    tmp_path: Path,
    fake_vllm_python: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "m.yaml"
    head = f"version: 1\ncache_dir: {tmp_path / 'cache'}\n"
    calls: list[Path] = []

    def broken_twice(file: Path) -> Manifest:
        calls.append(file)
        if len(calls) <= 2:
            raise RuntimeError("a bug")
        return load_manifest(file)

    monkeypatch.setattr("gateway.reloader.load_manifest", broken_twice)
    with (
        gateway_on(head, path, fake_vllm_python, watch_s=0.1) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        failed = c.post("/admin/reload")
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "internal_error" and "RuntimeError" in failed.text
        path.write_text(head + "# touched\n")
        eventually(lambda: len(calls) == 2, "the watch did not try the changed file")
        path.write_text(head + EXT)
        eventually(lambda: model_ids(c) == ["ext", "ext:a"], "the watch stopped after a bug")
    failures = [r for r in caplog.records if "failed with an internal error" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    internal = [
        r for r in caplog.records if "internal error on POST /admin/reload" in r.getMessage()
    ]
    assert len(internal) == 1 and internal[0].exc_info is not None
