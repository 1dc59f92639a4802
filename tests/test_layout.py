"""Dependency direction: gateway -> serving, never back; the gateway never loads torch or vLLM."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_serving_never_imports_gateway() -> None:
    assert "gateway" not in _imports("serving")


def test_gateway_process_does_not_load_torch_or_vllm() -> None:
    code = (
        "import sys, gateway.app, gateway.cli, serving.fleet;"
        "heavy = ('torch', 'vllm', 'transformers', 'llmcompressor');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
