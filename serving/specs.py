"""How one replica of a variant is launched: its GPUs, port, environment and vLLM arguments."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

from serving.errors import BackendFailed, PlacementError
from serving.hardware import Hardware
from serving.kernels import KernelChoice
from serving.launcher import LaunchSpec, free_port, port_in_use
from serving.manifest import Manifest
from serving.placement import Placement
from serving.store import VariantStore, gguf_file
from serving.swapping import takes_turns

# NVLink multicast stays off in every library vLLM may reach it through: on shared hosts a
# program that uses it can take the host's GPUs out of service (vLLM's symmetric-memory
# all-reduce is the one that would). CUDA numbers GPUs as nvidia-smi does (PCI order).
CUDA_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
}


LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHAPE_KEYS = (
    "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "torch_dtype", "dtype",
)  # fmt: skip


def compile_key(model_dir: Path) -> str:
    """vLLM's compile cache folder for a checkpoint: one per model shape and quantization
    method, so a new variant of the same shape and method finds the same folder (vLLM keys
    its own entries inside it) and a restart of the same variant starts warm."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    quant = config.get("quantization_config") or {}
    gguf = gguf_file(model_dir) is not None  # config.json is the base's there
    facts = {k: config.get(k) for k in SHAPE_KEYS} | {
        "quant": "gguf" if gguf else quant.get("quant_method") or quant.get("format")
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config.get('model_type', 'model')}-{facts['quant'] or 'dense'}-{digest}"


class LaunchPlanner:
    def __init__(
        self,
        manifest: Manifest,
        store: VariantStore,
        hardware: Hardware,
        placement: Placement,
        host: str,
        places_gpus: bool,
    ) -> None:
        self._manifest = manifest
        self._store = store
        self._hardware = hardware
        self._placement = placement
        self._host = host
        self._places_gpus = places_gpus

    def use(self, manifest: Manifest) -> None:
        """Plan from a reloaded manifest (``Fleet.reload``)."""
        self._manifest = manifest

    def model_dir(self, model_name: str, name: str) -> Path:
        model = self._manifest.models[model_name]
        variant = model.variants[name]
        if variant.needs_build:
            return self._store.variant_dir(model_name, variant)
        return model.source_path  # the base weights; FP8 is quantized by vLLM at load

    def replica(self, model_name: str, name: str, index: int, kernel: KernelChoice) -> LaunchSpec:
        """Replica ``index`` of a variant: claims its GPUs (if this fleet places them)."""
        model = self._manifest.models[model_name]
        opts = model.serve
        owner = f"{model_name}:{name}#{index}"
        gpus: tuple[int, ...] = ()
        if self._places_gpus:
            tp, share = model.tensor_parallel_size, opts.gpu_memory_utilization
            gpus = self._placement.place(owner, tp, share)
        port = self._port(opts.base_port, index, owner)
        env = {"VLLM_CPU_KVCACHE_SPACE": str(opts.cpu_kv_cache_gib), **opts.env, **kernel.env}
        model_dir = self.model_dir(model_name, name)
        if "VLLM_CACHE_ROOT" not in env and "VLLM_CACHE_ROOT" not in os.environ:
            env["VLLM_CACHE_ROOT"] = str(self._store.compile_cache_dir(compile_key(model_dir)))
        sleep_mode = self.sleep_mode(model_name, name, kernel)
        if sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep, /wake_up; also /collective_rpc:
            if self._host not in LOOPBACK:  # keep it where only the gateway reaches it
                raise BackendFailed(
                    f"{owner}: swapping puts vLLM in dev mode (/sleep, /collective_rpc); bind "
                    f"vLLM to localhost, not {self._host} (QUANTGATE_VLLM_HOST)"
                )
        if self._hardware.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
            env.update(CUDA_ENV)
        elif opts.replicas > 1:
            # vllm-cpu binds its compute threads to core 0 by default: spread the replicas.
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(index % (os.cpu_count() or 1))
        args = list(opts.extra_args)
        if self._hardware.device == "cuda":
            args += ["--tensor-parallel-size", str(model.tensor_parallel_size)]
            args += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
        return LaunchSpec(
            model=model_name,
            variant=name,
            replica=index,
            model_dir=model_dir,
            served_names=model.served_names(model_name, name),
            port=port,
            host=self._host,
            log_path=self._store.log_dir() / f"{model_name}-{name}-r{index}-{int(time.time())}.log",
            max_model_len=opts.max_model_len,
            dtype=opts.dtype,
            quantization=kernel.quantization,
            enforce_eager=opts.enforce_eager,
            extra_args=tuple(args),
            env=env,
            sleep_mode=sleep_mode,
        )

    def sleep_mode(self, model_name: str, name: str, kernel: KernelChoice | None = None) -> bool:
        """vLLM's sleep mode on GPUs this fleet places: for a swap-managed variant, and for a
        one-replica variant that follows its load with more than one kernel to choose from
        (``optimize_for: auto`` switches by sleep where there is no room beside), with vLLM on
        localhost (dev mode's endpoints stay where only the gateway reaches them)."""
        if not (self._places_gpus and self._hardware.device == "cuda"):
            return False
        if takes_turns(self._manifest, model_name, name):
            return True
        opts = self._manifest.models[model_name].serve
        choices = kernel is not None and bool(kernel.alternatives)
        return opts.follows_load and choices and opts.replicas == 1 and self._host in LOOPBACK

    def side(self, first: LaunchSpec, i: int) -> LaunchSpec | None:
        """``first`` on other idle GPUs of the same kind (claimed as ``<variant>#tune<i>``), for
        kernel tuning; None when there are none, or when this fleet does not place GPUs."""
        model = self._manifest.models[first.model]
        if not self._places_gpus or self._hardware.device != "cuda":
            return None
        owner = f"{first.model}:{first.variant}#tune{i}"
        share = model.serve.gpu_memory_utilization
        try:
            gpus = self._placement.place(owner, model.tensor_parallel_size, share)
        except PlacementError:
            return None
        kinds = {g.index: g.name for g in self._hardware.gpus}
        wanted = first.gpus
        if sorted(kinds.get(g, "") for g in gpus) != sorted(kinds.get(g, "") for g in wanted):
            self._placement.release(owner)
            return None
        env = {**first.env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
        return dataclasses.replace(first, port=free_port(self._host), env=env)

    def release(self, prefix: str) -> None:
        """Give back the GPUs of every owner starting with ``prefix``."""
        for owner in list(self._placement.claims()):
            if owner.startswith(prefix):
                self._placement.release(owner)

    def _port(self, base: int | None, index: int, owner: str) -> int:
        if base is None:
            return free_port(self._host)
        port = base + index
        if port_in_use(self._host, port):
            raise BackendFailed(f"{owner}: port {port} (base_port + {index}) is already in use")
        return port
