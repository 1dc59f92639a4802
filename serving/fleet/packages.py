"""Libraries vLLM imports at load for some methods, checked in vLLM's environment before a
launch, so a missing one is said with the package to install rather than vLLM's traceback."""

from __future__ import annotations

from pathlib import Path

from serving.errors import VariantUnsupported
from serving.launcher import importable
from serving.methods import Method, family


class VllmPackages:
    """What vLLM's environment can import, asked once per module."""

    def __init__(self, vllm_python: Path) -> None:
        self._python = vllm_python
        self._found: dict[str, bool] = {}

    async def check(self, label: str, method: Method) -> None:
        needed = family(method).vllm_packages.get(method)
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
