"""What experiment.py keeps around a phase: its clock, its results file, the gateway it runs,
the GPU processes it ends, and the logs it packs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import vllm_proc

ROOT = Path(__file__).resolve().parents[2]
VERSION_LINE = re.compile(r"Initializing a V1 LLM engine \(v[^)]+\)")
LOADING_LINE = re.compile(r"Model loading took [^\n]*")
SHUTDOWN_S = 45  # kept free at the end for stopping the gateway and vLLM


class Clock:
    def __init__(self, started_at: float, budget_s: float) -> None:
        self.started_at, self.deadline = started_at, started_at + budget_s

    def now(self) -> float:
        return round(time.time() - self.started_at, 1)

    def left(self) -> float:
        return self.deadline - time.time()


class Results:
    """results.json, rewritten after every step."""

    def __init__(self, out: Path, phase: str) -> None:
        self.path = out / "results.json"
        self.data: dict[str, Any] = {"phase": phase, "steps": [], "bench": [], "skipped": [],
                                     "first_requests": {}, "placement": {}}  # fmt: skip

    def step(self, clock: Clock, what: str, **info: Any) -> None:
        row = {"t_s": clock.now(), "step": what, **info}
        print(json.dumps(row), flush=True)
        self.data["steps"].append(row)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


class Gateway:
    """``quantgate serve`` on the manifest, as its own process; stopped with SIGTERM."""

    def __init__(self, manifest: Path, env: dict[str, str], log: Path, port: int = 8000) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self._cmd = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            str(manifest),
            "--port",
            str(port),
        ]
        self._env, self._log = env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def __enter__(self) -> Gateway:
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(self._cmd, cwd=ROOT, env=self._env, stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        vllm_proc.wait_healthy(self.proc, self.port, self._log, 60, "the gateway", poll_s=0.25)
        return self

    def get(self, path: str) -> Any:
        return self.http.get(path).json()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SHUTDOWN_S - 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()


def gpu_pids() -> list[int]:
    """vLLM servers and quantization workers holding a GPU: what an experiment started (the
    model writer, started early by run_*.sh, is left alone)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout  # fmt: skip
        pids = [int(x) for x in out.split() if x.strip().isdigit()]
        return [pid for pid in pids if _ours(pid)]
    return []


def _ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").lower()
    except OSError:
        return False
    return b"vllm" in cmdline or b"serving.worker" in cmdline


def kill_leftovers(results: Results, clock: Clock) -> None:
    """End GPU processes left by an earlier phase (vLLM runs in its own session), by pid."""
    pids = gpu_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        results.step(clock, "killed leftover GPU processes", pids=pids)
        time.sleep(3)


def vllm_logs(cache: Path) -> dict[str, Any]:
    """The kernel, version and weights lines of every vLLM log (tuning runs included)."""
    found = {}
    for path in sorted((cache / ".logs").glob("*.log")):
        text = path.read_text(encoding="utf-8", errors="replace")
        found[path.name] = {"kernels": vllm_proc.kernels_in(text),
                            "version": VERSION_LINE.findall(text)[:1],
                            "loading": LOADING_LINE.findall(text)[:1]}  # fmt: skip
    return found


def pack_logs(work: Path, out: Path) -> None:
    """Gateway, model-writing, job and vLLM logs (each cut to its last 2 MB) in one archive."""
    paths = [work / "gateway.log", work / "make_models.log", work / "manifest.yaml"]
    paths += sorted((work / "cache" / ".logs").glob("*.log"))
    paths += sorted((work / "cache" / ".jobs").glob("*/*"))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for path in paths:
            if not path.is_file():
                continue
            data = path.read_bytes()[-2_000_000:]
            info = tarfile.TarInfo(str(path.relative_to(work)))
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, fileobj=io.BytesIO(data))
