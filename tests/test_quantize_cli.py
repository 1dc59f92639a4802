"""``quantgate quantize``: bad input exits 2 before any work; a build writes folder + report.

The successful build here runs the fake worker (the CLI's plumbing); real builds through this
same command are in tests/test_quantization.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKES
from gateway.cli import main


def quantize(model_dir: Path, out: Path, *flags: str) -> int:
    args = ["quantize", "--model-path", str(model_dir), "--output-dir", str(out), *flags]
    return main(args)


@pytest.fixture
def fake_quantizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An interpreter whose ``-m serving.worker.quantize SPEC`` is the fake worker."""
    script = tmp_path / "fake-quant-python"
    script.write_text(
        f'#!/bin/bash\nexec "{sys.executable}" "{FAKES / "fake_quantizer.py"}" "${{@: -1}}"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("QUANTGATE_QUANTIZER_PYTHON", str(script))
    return script


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "gptq", "--bits", "5"], "method 'gptq' supports bits 2, 3, 4, 8, not 5"),
        (["--method", "awq", "--bits", "8"], "method 'awq' supports bits 2, 3, 4, not 8"),
        (["--method", "gptq", "--group-size", "512"], "group_size 512 does not divide"),
        (["--method", "gptq", "--dataset", "/nonexistent.txt"], "/nonexistent.txt does not exist"),
        (["--method", "rtn", "--calibration-samples", "8"], "'rtn' is data-free"),
        (["--method", "fp8"], "method 'fp8' has nothing to build"),
    ],
)
def test_bad_input_exits_2_before_any_work(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    assert quantize(model_dir, tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_method_and_empty_dataset(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quantize(model_dir, tmp_path / "out", "--method", "int3") == 2
    assert "method: Input should be 'none', 'gptq'" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert quantize(model_dir, tmp_path / "out", "--method", "awq", "--dataset", str(empty)) == 2
    assert "holds no text" in capsys.readouterr().err


def test_build_writes_the_folder_and_report_a_job_writes(
    model_dir: Path, tmp_path: Path, fake_quantizer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "variants" / "tiny-gptq-w4"
    assert quantize(model_dir, out, "--method", "gptq", "--calibration-samples", "16") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["calibration"]["samples"] == 16
    assert report["perplexity"]["increase"] == pytest.approx(0.01)
    assert report["path"] == str(out.resolve()) and report["size_bytes"] > 0
    captured = capsys.readouterr()
    assert "held-out perplexity: base 100.000, variant 101.000 (+1.00%)" in captured.out
    assert "4/4 layers" in captured.err  # the progress bar
    assert quantize(model_dir, out, "--method", "gptq") == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_failed_build_exits_1_with_the_log_tail(
    model_dir: Path,
    tmp_path: Path,
    fake_quantizer: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_QUANT_FAIL", "1")
    log = tmp_path / "logs" / "build.log"
    log.parent.mkdir()
    assert quantize(model_dir, tmp_path / "out", "--method", "rtn", "--log", str(log)) == 1
    assert "fake calibration failure" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out*")) == []
    assert "fake calibration failure" in log.read_text()  # --log keeps the whole log


def test_sigterm_kills_the_worker_and_writes_nothing(
    model_dir: Path, tmp_path: Path, fake_quantizer: Path
) -> None:
    out = tmp_path / "out"
    args = ["--model-path", str(model_dir), "--output-dir", str(out), "--method", "rtn"]
    env = {**os.environ, "FAKE_QUANT_S": "60", "FAKE_LAYERS": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "quantize", *args],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert "layers" in proc.stderr.readline()  # the worker is running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    assert "the worker was killed and nothing written" in proc.stderr.read()
    proc.stderr.close()
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def test_log_keeps_every_stage_and_nothing_is_written_beside_it(
    model_dir: Path, tmp_path: Path, fake_quantizer: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log, mine = logs / "build.log", logs / "spec.json"
    assert quantize(model_dir, tmp_path / "a", "--method", "rtn", "--log", str(log)) == 0
    assert sorted(p.name for p in logs.iterdir()) == ["build.log"]

    mine.write_text("the user's own file\n")
    log.write_text("an earlier run\n")
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF, as far as the fake worker cares")
    cache = ["--cache-dir", str(tmp_path / "cache"), "--log", str(log)]
    assert quantize(gguf, tmp_path / "b", "--method", "rtn", *cache) == 0
    assert mine.read_text() == "the user's own file\n"
    assert sorted(p.name for p in logs.iterdir()) == ["build.log", "spec.json"]
    results = [line for line in log.read_text().splitlines() if line.startswith("QUANTGATE_RESULT")]
    assert len(results) == 2  # the GGUF's import, then the build
    assert '"variant": null' in results[0] and '"quantize_s"' in results[1]
    assert "an earlier run" not in log.read_text()
