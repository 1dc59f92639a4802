"""Where variants live on disk, and how a finished build is put in place atomically.

    <cache>/<model>/<method>-<recipe hash>/      a built variant: weights, tokenizer, report.json
    <cache>/<model>/.staging/<...>-<job id>/     a build in progress (removed if it fails)
    <cache>/.jobs/<job id>/                      spec.json, job.log, state.json of each job
    <cache>/.sources/<gguf-sha | hf-org--name--rev>/  a prepared GGUF or Hub source (report.json)
    <cache>/.sources/.staging/, .partial/        a source being imported, a download to resume
    <cache>/.perplexity/                         base models' held-out perplexity, measured once
    <cache>/.logs/                               vLLM logs, one per replica
    <cache>/.vllm-cache/<shape-method>/          vLLM's compile cache, per model shape and method

A variant's folder is named by its recipe (its model's source included), not by its name in
the manifest: the same recipe is built once, and changing the recipe makes a new build. A
variant counts as built only when its folder holds ``report.json``; the report is written
inside the staging folder, which is then renamed into place in one step. Kernel tuning results
are added to the report later (``kernel_tuning``), by a temporary file and ``os.replace``; a
variant with nothing to build (``method: none`` or ``fp8``) gets a folder holding only that
report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from serving.manifest import Variant
from serving.worker.protocol import GGUF_FILE

REPORT = "report.json"
BY_NAME = "by-name"
TUNING = "kernel_tuning"


class VariantStore:
    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir

    def variant_dir(self, model: str, variant: Variant) -> Path:
        return self.root / model / f"{variant.method.value}-{variant.recipe_hash()}"

    def by_name(self, model: str, name: str) -> Path:
        """``<cache>/<model>/by-name/<variant name>``: a link to the variant's folder as the
        manifest names it now (what the chart's static backends serve)."""
        return self.root / model / BY_NAME / name

    def link_name(self, model: str, name: str, variant: Variant) -> None:
        """Point the variant's name at its built folder (atomically; a new recipe under the
        same name moves the link)."""
        link, target = self.by_name(model, name), self.variant_dir(model, variant)
        if not (target / REPORT).is_file() or (link.is_symlink() and link.resolve() == target):
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("..") / target.name, target_is_directory=True)
        tmp.replace(link)

    def is_built(self, model: str, variant: Variant) -> bool:
        return (self.variant_dir(model, variant) / REPORT).is_file()

    def report(self, model: str, variant: Variant) -> dict[str, Any] | None:
        return read_report(self.variant_dir(model, variant))

    def tuning(self, model: str, variant: Variant) -> dict[str, Any]:
        """Kernel tuning results of a variant, by ``<GPU>|vllm <version>``."""
        found: dict[str, Any] = (self.report(model, variant) or {}).get(TUNING) or {}
        return found

    def save_tuning(self, model: str, variant: Variant, key: str, result: dict[str, Any]) -> None:
        """Add one tuning result to the variant's report (atomically: temp file, rename)."""
        folder = self.variant_dir(model, variant)
        if variant.needs_build and not self.is_built(model, variant):
            raise ValueError(
                f"{model}/{folder.name} is not built: nothing to add tuning results to"
            )
        folder.mkdir(parents=True, exist_ok=True)
        report = self.report(model, variant) or {
            "model": model,
            "recipe": variant.recipe(),
            "recipe_hash": variant.recipe_hash(),
        }
        report[TUNING] = {**(report.get(TUNING) or {}), key: result}
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(report, indent=2) + "\n")
            Path(tmp).replace(folder / REPORT)  # os.replace: atomic
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def staging_dir(self, model: str, variant: Variant, job_id: str) -> Path:
        path = self.root / model / ".staging" / f"{variant.recipe_hash()}-{job_id}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def staging_dirs(self) -> list[Path]:
        return sorted(self.root.glob("*/.staging/*"))

    def job_dir(self, job_id: str) -> Path:
        path = self.root / ".jobs" / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def job_dirs(self) -> list[Path]:
        return sorted(p for p in (self.root / ".jobs").glob("*") if p.is_dir())

    def log_dir(self) -> Path:
        path = self.root / ".logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def compile_cache_dir(self, key: str) -> Path:
        """vLLM's compile cache (VLLM_CACHE_ROOT) for one model shape and method."""
        return self.root / ".vllm-cache" / key

    def perplexity_dir(self) -> Path:
        return self.root / ".perplexity"


def read_report(variant_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((variant_dir / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def commit(staging: Path, final: Path, report: dict[str, Any]) -> None:
    """Write the report into the staging folder, then rename it into place."""
    (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if final.exists():  # a stale, report-less leftover of an older crash
        shutil.rmtree(final)
    staging.rename(final)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gguf_file(model_dir: Path) -> Path | None:
    """The GGUF file of a gguf variant's folder (whose config.json is the base's), or None."""
    path = model_dir / GGUF_FILE
    return path if path.is_file() else None


def weights_size(model_dir: Path) -> int:
    """Bytes of a checkpoint's weight files (what a level-1 sleeper keeps in host RAM)."""
    return sum(
        f.stat().st_size
        for pattern in ("*.safetensors", "*.bin", "*.pt", "*.gguf")
        for f in model_dir.glob(pattern)
        if f.is_file()
    )
