"""What this host can serve: its GPUs (or CPU), the vLLM and quantizer environments Quantgate
runs, and the kernel each common scheme gets here. ``quantgate doctor`` prints it."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.hardware import Hardware
from serving.kernels import KernelChoice, choose, planned_scheme
from serving.manifest import Variant

PROBE_TIMEOUT_S = 180.0  # importing vLLM takes tens of seconds on a cold disk
VLLM_PROBE = """
import json, torch, vllm
cuda = torch.cuda.is_available()
print(json.dumps({"vllm": vllm.__version__, "torch": torch.__version__,
                  "cuda": torch.version.cuda, "cuda_available": cuda,
                  "devices": torch.cuda.device_count() if cuda else 0}))
"""
QUANTIZER_PROBE = """
import json, torch, llmcompressor, compressed_tensors
print(json.dumps({"llmcompressor": llmcompressor.__version__, "torch": torch.__version__,
                  "compressed_tensors": compressed_tensors.__version__,
                  "cuda_available": torch.cuda.is_available()}))
"""
VARIANTS: dict[str, dict[str, Any]] = {  # a manifest's variant of each common scheme
    "W4A16 (GPTQ, AWQ, RTN)": {"method": "gptq"},
    "W4A8": {"method": "gptq", "activation_bits": 8},
    "W8A8 (int8)": {"method": "w8a8"},
    "FP8 (at load)": {"method": "fp8"},
    "NF4 (bitsandbytes, at load)": {"method": "bitsandbytes"},
    "GGUF Q4_K_M": {"method": "gguf"},
    "torchao int4": {"method": "torchao"},
}


@dataclass
class Probe:
    """One environment asked what it has: its answer, or why it could not say."""

    python: str
    found: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Diagnosis:
    hardware: Hardware
    vllm: Probe
    quantizer: Probe
    kernels: dict[str, str]
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        hw = self.hardware
        return {
            "device": hw.device,
            "gpus": [vars(g) for g in hw.gpus],
            "avx512": "avx512f" in hw.cpu_flags,
            "vllm": vars(self.vllm),
            "quantizer": vars(self.quantizer),
            "kernels": self.kernels,
            "problems": self.problems,
        }


async def probe(python: Path, code: str, pythonpath: str | None = None) -> Probe:
    """Run ``code`` (which prints one JSON object) with ``python``."""
    result = Probe(str(python))
    env = dict(os.environ)
    if pythonpath:
        rest = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{pythonpath}:{rest}" if rest else pythonpath
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python), "-c", code, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    lines = err.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        result.error = lines[-1] if lines else f"exited with {proc.returncode}"
        return result
    result.found = json.loads(out.decode().strip().splitlines()[-1])
    return result


def problems_of(hw: Hardware, vllm: Probe, quantizer: Probe) -> list[str]:
    """What stands between this host and serving: each a sentence saying what to do."""
    found = []
    if vllm.error:
        found.append(f"vLLM does not import with {vllm.python}: {vllm.error} (make install)")
    elif hw.device == "cuda" and not vllm.found.get("cuda_available"):
        found.append(
            f"the GPUs are there (nvidia-smi) but vLLM's torch {vllm.found.get('torch')} sees "
            "none: it is a CPU build, or the driver is older than its CUDA "
            f"{vllm.found.get('cuda')} needs (make install GPU=1)"
        )
    if quantizer.error:
        found.append(
            f"the quantizer does not import with {quantizer.python}: {quantizer.error} "
            "(make install; variants that need a build cannot be made)"
        )
    return found


async def diagnose(
    vllm_python: Path, quantizer_python: Path, quantizer_pythonpath: str | None = None
) -> Diagnosis:
    hw = Hardware.detect()
    vllm, quantizer = await asyncio.gather(
        probe(vllm_python, VLLM_PROBE),
        probe(quantizer_python, QUANTIZER_PROBE, quantizer_pythonpath),
    )
    kernels = {}
    for name, fields in VARIANTS.items():
        variant = Variant.model_validate(fields)
        why_not = hw.unsupported(variant)
        choice = choose(planned_scheme(variant), hw)
        if why_not:
            choice = KernelChoice(None, None, reason=why_not)
        also = f" (also {', '.join(choice.alternatives)})" if choice.alternatives else ""
        kernels[name] = f"{choice.kernel}{also}" if choice.supported else f"none: {choice.reason}"
    return Diagnosis(hw, vllm, quantizer, kernels, problems_of(hw, vllm, quantizer))
