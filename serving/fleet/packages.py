"""Libraries vLLM imports at load for some methods, checked in vLLM's environment before a
launch, so a missing one is said with the package to install rather than vLLM's traceback."""

from __future__ import annotations

from pathlib import Path

from serving.errors import VariantUnsupported
from serving.launcher import importable
from serving.manifest import Method
from serving.worker.protocol import HF_QUANTIZER_PACKAGES as QUANTIZER_PACKAGES

# module, and what to install (bitsandbytes and torchao: the quantizer's pins, which builds or
# measures them)
VLLM_PACKAGES = {
    Method.BITSANDBYTES: QUANTIZER_PACKAGES["bitsandbytes"],
    Method.GGUF: ("vllm_gguf_plugin", "vllm-gguf-plugin==0.0.5"),
    Method.TORCHAO: QUANTIZER_PACKAGES["torchao"],
}


class VllmPackages:
    """What vLLM's environment can import, asked once per module."""

    def __init__(self, vllm_python: Path) -> None:
        self._python = vllm_python
        self._found: dict[str, bool] = {}

    async def check(self, label: str, method: Method) -> None:
        needed = VLLM_PACKAGES.get(method)
        if needed is None:
            return
        module, requirement = needed
        if module not in self._found:
            self._found[module] = await importable(self._python, module)
        if not self._found[module]:
            raise VariantUnsupported(
                f"{label} needs the {module} package in vLLM's environment ({self._python}), "
                f"which has none: pip install '{requirement}' there"
            )
