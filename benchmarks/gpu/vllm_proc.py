"""What the GPU scripts share about the servers they start (vLLM, the gateway) and vLLM's log."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx

KERNEL_LINE = re.compile(r"Using \w+Kernel for \w+")  # vLLM's log names each linear kernel


def kernels_in(log_text: str) -> list[str]:
    """The kernel lines of a vLLM log, each once, sorted."""
    return sorted(set(KERNEL_LINE.findall(log_text)))


def wait_healthy(
    proc: subprocess.Popen[bytes],
    port: int,
    log: Path,
    timeout_s: float,
    what: str = "vLLM",
    poll_s: float = 1.0,
) -> float:
    """Seconds until the server ``proc`` started on ``port`` answers /health; exits, naming
    the log, if it dies or does not answer within ``timeout_s`` (and is then killed)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return round(time.monotonic() - t0, 1)
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    proc.kill()
    proc.wait()
    raise SystemExit(f"{what} did not answer /health in {timeout_s:.0f} s; see {log}")
