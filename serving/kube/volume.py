"""The cache volume: one claim that the gateway, vLLM pods and quantization Jobs all mount.

The gateway sees the cache at the manifest's ``cache_dir``, which must be where it mounts the
claim's root (the chart checks ``cache_dir`` is ``cache.mountPath``); pods see the same claim at
``/var/cache/quantgate``. A path is handed to a pod by its place inside the cache, so
everything a pod reads (a variant, a base checkpoint, a job spec) must live in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kubernetes.aio.client import (
    V1EmptyDirVolumeSource,
    V1PersistentVolumeClaimVolumeSource,
    V1Volume,
    V1VolumeMount,
)

MOUNT_PATH = PurePosixPath("/var/cache/quantgate")
VOLUME = "cache"
SHM_VOLUME = "dshm"


@dataclass(frozen=True)
class CacheVolume:
    claim: str
    local_root: Path  # the manifest's cache_dir: where the gateway mounts the claim

    def path(self, local: Path) -> PurePosixPath:
        """Where ``local`` (a path under the gateway's cache) lies inside a pod.

        Raises ValueError for a path outside the cache: no pod can see it.
        """
        try:
            inside = Path(local).resolve().relative_to(self.local_root.resolve())
        except ValueError:
            raise ValueError(
                f"{local} is outside the cache {self.local_root}: pods see only the cache "
                f"volume (claim {self.claim}); put it under the cache"
            ) from None
        return MOUNT_PATH / inside.as_posix()


def cache_volume(claim: str) -> V1Volume:
    return V1Volume(
        name=VOLUME, persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(claim_name=claim)
    )


def cache_mount(read_only: bool) -> V1VolumeMount:
    return V1VolumeMount(name=VOLUME, mount_path=str(MOUNT_PATH), read_only=read_only)


def compile_cache_mount(key: str, mount_path: str) -> V1VolumeMount:
    """vLLM's compile cache for one model shape and method, written by the pods that serve
    it: a warm cold start after the first (``serving.specs.compile_key``)."""
    return V1VolumeMount(
        name=VOLUME, mount_path=mount_path, sub_path=f".vllm-cache/{key}", read_only=False
    )


def shared_memory(size: str | None = None) -> tuple[V1Volume, V1VolumeMount]:
    """A memory-backed /dev/shm: NCCL between tensor-parallel workers outgrows the default;
    ``size``: its limit (counted against the pod's memory), if any."""
    source = V1EmptyDirVolumeSource(medium="Memory", size_limit=size)
    volume = V1Volume(name=SHM_VOLUME, empty_dir=source)
    return volume, V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")
