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


def _module_imports(path: Path, names: bool = True) -> set[str]:
    """Every module ``path`` imports by absolute name; with ``names``, ``from a.b import c``
    counts as a.b.c too (c may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if names:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _offenders(
    files: list[Path], forbidden: tuple[str, ...], names: bool = True
) -> dict[str, list[str]]:
    out = {}
    for path in files:
        bad = sorted(m for m in _module_imports(path, names) if m.startswith(forbidden))
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


def test_the_worker_imports_nothing_of_serving_but_its_own_modules() -> None:
    """It runs in the quantizer's environment, with only serving/worker's files on its path."""
    files = list((ROOT / "serving" / "worker").rglob("*.py"))
    serving_outside = tuple(
        f"serving.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "serving").iterdir()
        if p.name not in ("worker", "__init__.py", "__pycache__")
    )
    assert _offenders(files, serving_outside) == {}


def test_launch_code_does_not_import_quantize_code() -> None:
    launch = ["launcher", "replica", "pool", "specs", "swapping", "placement", "kernels", "tuner",
              "decode_bench"]  # fmt: skip
    files = [ROOT / "serving" / f"{name}.py" for name in launch]
    files += [ROOT / "serving" / "kube" / f for f in ("launcher.py", "objects.py")]
    quantize = ("serving.build", "serving.jobs", "serving.job", "serving.precheck",
                "serving.worker.compressor", "serving.worker.quantize",
                "serving.worker.gguf")  # fmt: skip
    assert _offenders(files, quantize) == {}


def test_the_gateway_uses_the_fleets_public_surface_only() -> None:
    """``serving.fleet`` is used through its package (``__all__``), never its modules; nothing
    private of serving is imported."""
    files = list((ROOT / "gateway").rglob("*.py"))
    assert _offenders(files, ("serving.fleet.",), names=False) == {}
    private = {
        str(p.relative_to(ROOT)): sorted(
            m for m in _module_imports(p) if m.startswith("serving") and "._" in m
        )
        for p in files
    }
    assert {k: v for k, v in private.items() if v} == {}


# Declarations rather than logic: the metrics table and the argument parsers.
LONG_DECLARATIONS = {
    "gateway/metrics.py:GatewayMetrics.__init__",
    "gateway/cli/main.py:_parser",
    "gateway/cli/quantize.py:register",
}


def test_modules_and_functions_stay_small() -> None:
    """No module of gateway/ or serving/ over 400 lines, no function over 60."""
    long_modules, long_functions = [], []
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "serving").rglob("*.py")]:
        text, name = path.read_text(), str(path.relative_to(ROOT))
        if len(text.splitlines()) > 400:
            long_modules.append(name)
        for node in ast.walk(ast.parse(text)):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    where = f"{name}:{owner}{child.name}"
                    size = (child.end_lineno or child.lineno) - child.lineno + 1
                    if size > 60 and where not in LONG_DECLARATIONS:
                        long_functions.append(f"{where} ({size} lines)")
    assert long_modules == [] and long_functions == []


def test_only_the_method_families_branch_on_the_method() -> None:
    """What a method is lives in its family's module (serving/methods/); elsewhere in serving
    and gateway code asks ``family(method)`` (``Method.NONE``, the base weights, aside)."""
    import re

    from serving.methods import FAMILIES, Method

    offenders = {}
    for path in [*(ROOT / "serving").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")]:
        if (ROOT / "serving" / "methods") in path.parents:
            continue
        named = set(re.findall(r"\bMethod\.([A-Z0-9_]+)", path.read_text())) - {"NONE"}
        if named:
            offenders[str(path.relative_to(ROOT))] = sorted(named)
    assert offenders == {}
    members = [m for f in FAMILIES for m in f.methods]
    assert sorted(members) == sorted(Method)  # every method in exactly one family
