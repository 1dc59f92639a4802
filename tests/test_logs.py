"""The gateway's log as ``quantgate serve`` writes it: with ``--log-format json`` every line is
one JSON object, uvicorn's own lines, tracebacks and Python's warnings included; text lines stay
plain."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from conftest import free_port, serve_manifest
from gateway.cli.main import server_config
from gateway.logs import LogFormat, configure

Scope = dict[str, Any]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line of ``text`` as the JSON object it must be."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\nin:\n{text}")
    return parsed


def test_serve_with_json_logs_writes_only_json_lines(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"version: 1\ncache_dir: {tmp_path / 'cache'}\nmodels: {{}}\n")
    log = tmp_path / "gateway.log"
    with serve_manifest(manifest, log, "--log-format", "json") as served:
        assert httpx.get(served.url + "/v1/models").status_code == 200
    lines = json_lines(log.read_text())
    uvicorn_said = [line["message"] for line in lines if line["logger"] == "uvicorn.error"]
    assert any(m.startswith("Uvicorn running on http://127.0.0.1:") for m in uvicorn_said)
    assert "Application startup complete." in uvicorn_said
    assert any(m.startswith("Finished server process") for m in uvicorn_said)
    assert {"time", "level", "logger", "message"} <= set(lines[0])


async def broken_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        raise RuntimeError("a bug in a route")


def serve_one_broken_request(style: LogFormat) -> None:
    """Log as ``quantgate serve --log-format style`` does, run uvicorn as it does on an app
    that fails, and ask it once."""
    configure("info", style)
    port = free_port()
    server = uvicorn.Server(server_config(broken_app, "127.0.0.1", port, "info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 500
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.usefixtures("logging_kept")
def test_uvicorns_traceback_is_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    serve_one_broken_request("json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a setting that will go away", UserWarning, stacklevel=1)
    lines = json_lines(capsys.readouterr().err)
    [warned] = [line for line in lines if line["logger"] == "py.warnings"]
    assert "UserWarning: a setting that will go away" in warned["message"]
    [failure] = [line for line in lines if "error" in line]
    assert failure["logger"] == "uvicorn.error" and failure["level"] == "ERROR"
    assert failure["message"].startswith("Exception in ASGI application")
    assert failure["error"].startswith("Traceback (most recent call last):")
    assert failure["error"].endswith("RuntimeError: a bug in a route")
    assert any(line["message"].startswith("Uvicorn running on") for line in lines)


@pytest.mark.usefixtures("logging_kept")
def test_text_logs_stay_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    serve_one_broken_request("text")
    err = capsys.readouterr().err
    assert " INFO Uvicorn running on http://127.0.0.1:" in err
    assert " ERROR Exception in ASGI application\n" in err
    assert "Traceback (most recent call last):" in err
    assert not err.lstrip().startswith("{")
