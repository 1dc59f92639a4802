"""Process settings from ``QUANTGATE_*`` variables: a value a setting cannot take stops every
command that reads it with one line naming the variable, and exit 2 (never a traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from gateway.cli import main
from gateway.settings import GatewaySettings
from serving.errors import SettingsError
from serving.settings import ServingSettings, read_settings

INTEGER = "Input should be a valid integer, unable to parse string as an integer"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A manifest of one upstream (never asked: the commands stop before any work)."""
    path = tmp_path / "m.yaml"
    path.write_text(f"""
cache_dir: {tmp_path / "cache"}
models:
  up:
    default_variant: main
    variants:
      main: {{method: none, upstream: {{url: "http://127.0.0.1:1", model: x}}}}
""")
    return path


def test_every_bad_variable_is_named_and_its_value_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUANTGATE_PORT", "abc")
    monkeypatch.setenv("QUANTGATE_IDLE_TIMEOUT_S", "-1")
    with pytest.raises(SettingsError) as info:
        read_settings(GatewaySettings)
    assert str(info.value) == (
        f"QUANTGATE_PORT: {INTEGER}; QUANTGATE_IDLE_TIMEOUT_S: Input should be greater than 0"
    )
    assert read_settings(ServingSettings).max_concurrent_jobs == 1  # theirs are fine


def test_serve_with_a_bad_port_says_which_variable_and_exits_2(manifest: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "QUANTGATE_PORT": "abc"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", str(manifest)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == f"quantgate serve: QUANTGATE_PORT: {INTEGER}\n"


@pytest.mark.parametrize(
    ("variable", "value", "command", "message"),
    [
        (
            "QUANTGATE_LAUNCHER",
            "mars",
            ["doctor"],
            "Input should be 'local', 'kubernetes' or 'kubernetes-static'",
        ),
        ("QUANTGATE_MAX_CONCURRENT_JOBS", "x", ["bench", "{manifest}"], INTEGER),
        ("QUANTGATE_MAX_CONCURRENT_JOBS", "x", ["make-model", "{tmp}/out"], INTEGER),
        ("QUANTGATE_PORT", "abc", ["demo", "{manifest}"], INTEGER),
        ("QUANTGATE_MAX_BODY_BYTES", "1", ["serve", "{manifest}"], "Input should be greater"),
    ],
)
def test_each_command_that_reads_settings_refuses_a_bad_one(
    manifest: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    command: list[str],
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    args = [a.format(manifest=manifest, tmp=manifest.parent) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quantgate {command[0]}: {variable}: {message}")
    assert len(err.strip().splitlines()) == 1


def test_quantize_refuses_a_bad_setting(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("QUANTGATE_MAX_CONCURRENT_JOBS", "x")
    args = ["--model-path", str(model_dir), "--output-dir", str(tmp_path / "out")]
    assert main(["quantize", *args, "--method", "rtn"]) == 2
    err = capsys.readouterr().err
    assert err == f"quantgate quantize: QUANTGATE_MAX_CONCURRENT_JOBS: {INTEGER}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("logging_kept")  # serve in this process configures logging
def test_the_kubernetes_launcher_refuses_a_bad_namespace(
    manifest: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUANTGATE_LAUNCHER", "kubernetes")
    monkeypatch.setenv("QUANTGATE_NAMESPACE", "Not_A_Namespace")
    assert main(["serve", str(manifest), "--log-level", "critical"]) == 2
    assert capsys.readouterr().err.startswith("quantgate serve: QUANTGATE_NAMESPACE: String")
