"""quantgate doctor: what this host can serve, and what to fix first."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from serving.doctor import Probe, diagnose, problems_of
from serving.hardware import Gpu, Hardware

H100 = Hardware("cuda", gpus=(Gpu(0, "H100", 90, 81_559),))


def test_environments_that_do_not_import_are_problems_with_what_to_do() -> None:
    found = asyncio.run(diagnose(Path("/nonexistent/python"), Path("/nonexistent/quantizer")))
    assert len(found.problems) == 2
    assert "vLLM does not import with /nonexistent/python" in found.problems[0]
    assert "make install" in found.problems[0] and "quantizer" in found.problems[1]
    assert set(found.kernels) >= {"W4A16 (GPTQ, AWQ, RTN)", "W8A8 (int8)", "FP8 (at load)"}


def test_gpus_that_vllms_torch_cannot_see_are_a_problem() -> None:
    cpu_torch = Probe("vllm-python", {"torch": "2.13.0+cpu", "cuda": None, "cuda_available": False})
    quantizer = Probe("quantizer-python", {"llmcompressor": "0.14.0.1", "cuda_available": True})
    [problem] = problems_of(H100, cpu_torch, quantizer)
    assert "sees none" in problem and "2.13.0+cpu" in problem and "GPU=1" in problem
    gpu_torch = Probe("vllm-python", {"torch": "2.11.0", "cuda": "13.0", "cuda_available": True})
    assert problems_of(H100, gpu_torch, quantizer) == []


def test_the_command_exits_1_with_the_problems_as_json() -> None:
    env = {**os.environ, "QUANTGATE_VLLM_PYTHON": "/nonexistent/python"}
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "doctor", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    found = json.loads(run.stdout)
    assert found["vllm"]["error"] and found["problems"][0].startswith("vLLM does not import")
    assert found["device"] in ("cpu", "cuda")
