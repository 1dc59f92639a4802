"""One real vLLM OpenAI server as a supervised child process.

Start it on a free port, wait for ``/health``, notice an early exit and report it with the
tail of its log, stop it with terminate → wait → kill (the whole process group: vLLM forks
an engine core process).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from serving.errors import BackendFailed
from serving.processes import tail
from serving.store import gguf_file

SLEEP_CALL_TIMEOUT_S = 120.0  # the first level-1 sleep pins the weights' host memory: seconds


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def importable(python: Path, module: str) -> bool:
    """Whether ``module`` imports in the environment of ``python`` (without importing it)."""
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 3)"
    proc = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        code,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


class Server(Protocol):
    """What the replica supervisor drives: a local vLLM process, or a Kubernetes Deployment."""

    spec: LaunchSpec

    @property
    def started_at(self) -> float | None: ...
    @property
    def ready_at(self) -> float | None: ...
    @property
    def url(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    def alive(self) -> bool: ...
    async def start(self, timeout_s: float) -> None: ...
    async def wait(self) -> int: ...
    async def stop(self, grace_s: float = 15.0) -> None: ...
    async def sleep(self, level: int) -> None: ...
    async def wake_up(self, level: int) -> None: ...


@dataclass(frozen=True)
class LaunchSpec:
    model_dir: Path
    served_names: tuple[str, ...]
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    max_model_len: int = 512
    dtype: str = "bfloat16"
    quantization: str | None = None
    enforce_eager: bool = False
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    model: str = ""  # manifest names, for launchers that name objects after them
    variant: str = ""
    replica: int = 0
    sleep_mode: bool = False  # --enable-sleep-mode (and VLLM_SERVER_DEV_MODE=1 in env)

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs it runs on (``CUDA_VISIBLE_DEVICES``); none on a CPU."""
        visible = self.env.get("CUDA_VISIBLE_DEVICES", "")
        return tuple(int(g) for g in visible.split(",") if g.strip())

    def argv(self, python: Path) -> list[str]:
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            *model_args(self.model_dir),
            "--served-model-name", *self.served_names,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if self.quantization:
            args += ["--quantization", self.quantization]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.sleep_mode:
            args.append("--enable-sleep-mode")
        return [*args, *self.extra_args]


def model_args(model_dir: Path) -> list[str]:
    """``--model``: the folder, or for a GGUF variant its ``model.gguf`` with the folder as
    tokenizer and config (vllm-gguf-plugin takes a file; the tokenizer it would rebuild from
    the GGUF metadata is slower and may differ from the base's)."""
    gguf = gguf_file(model_dir)
    if gguf is not None:
        return ["--model", str(gguf), "--tokenizer", str(model_dir)]
    return ["--model", str(model_dir)]


class VllmServer:
    def __init__(self, spec: LaunchSpec, python: Path) -> None:
        self.spec = spec
        self._python = python
        self._proc: asyncio.subprocess.Process | None = None
        self._group_reaped = False
        self.started_at: float | None = None
        self.ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout_s: float) -> None:
        """Spawn vLLM and return once /health answers 200; raise BackendFailed otherwise.

        A server that is already running (one the kernel tuner kept) returns at once."""
        if self.alive() and self.ready_at is not None:
            return
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.spec.env}
        with self.spec.log_path.open("ab") as log:
            self._group_reaped = False
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.argv(self._python),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.started_at = time.time()
        try:
            await self._wait_healthy(timeout_s)
        except BaseException:
            await self.stop()
            raise
        self.ready_at = time.time()

    async def _wait_healthy(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise BackendFailed(
                        f"vLLM for {self.spec.served_names[0]} exited with code "
                        f"{self._proc.returncode} while starting",
                        log_tail=tail(self.spec.log_path),
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.url + "/health")).status_code == 200:
                        return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), 0.5)
        raise BackendFailed(
            f"vLLM for {self.spec.served_names[0]} was not healthy within {timeout_s:.0f} s",
            log_tail=tail(self.spec.log_path),
        )

    async def sleep(self, level: int) -> None:
        """vLLM's sleep mode: level 1 moves the weights to (pinned) host RAM and drops the KV
        cache, level 2 drops the weights too. Needs ``sleep_mode`` and VLLM_SERVER_DEV_MODE."""
        async with httpx.AsyncClient(timeout=SLEEP_CALL_TIMEOUT_S) as client:
            await self._dev_call(client, "POST", f"/sleep?level={level}")
            await self._expect_sleeping(client, True)

    async def wake_up(self, level: int) -> None:
        """Back on the GPU; after level 2 the weights are reloaded from disk and the prefix
        cache (computed with the old weights' memory) is reset."""
        async with httpx.AsyncClient(timeout=SLEEP_CALL_TIMEOUT_S) as client:
            await self._dev_call(client, "POST", "/wake_up")
            if level >= 2:
                rpc: dict[str, object] = {"method": "reload_weights"}
                await self._dev_call(client, "POST", "/collective_rpc", rpc)
                await self._dev_call(client, "POST", "/reset_prefix_cache")
            await self._expect_sleeping(client, False)

    async def _expect_sleeping(self, client: httpx.AsyncClient, expected: bool) -> None:
        body = await self._dev_call(client, "GET", "/is_sleeping")
        if body.get("is_sleeping") is not expected:
            raise BackendFailed(
                f"vLLM for {self.spec.served_names[0]} says is_sleeping="
                f"{body.get('is_sleeping')!r} after {'sleep' if expected else 'wake_up'}",
                log_tail=tail(self.spec.log_path),
            )

    async def _dev_call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: dict[str, object] | None = None,
    ) -> dict[str, object]:
        """One call to vLLM's dev-mode endpoints (localhost only; never proxied)."""
        name = self.spec.served_names[0]
        try:
            r = await client.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise BackendFailed(
                f"vLLM for {name}: {method} {path} failed: {exc!r}",
                log_tail=tail(self.spec.log_path),
            ) from exc
        if r.status_code >= 400:
            raise BackendFailed(
                f"vLLM for {name}: {method} {path} answered {r.status_code}: {r.text[:300]}",
                log_tail=tail(self.spec.log_path),
            )
        try:
            found = r.json()
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code."""
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL it. A server that
        died by itself (``kill -9``, a crash) leaves vLLM's engine processes behind in its
        group: those are killed too, once."""
        proc = self._proc
        if proc is None or self._group_reaped:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
        self._group_reaped = True  # the group id may belong to someone else from now on


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
