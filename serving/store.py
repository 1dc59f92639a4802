"""Where variants live on disk, and how a finished build is put in place atomically.

    <cache>/<model>/<variant>-<recipe hash>/     a built variant: weights, tokenizer, report.json
    <cache>/<model>/.staging/<...>-<job id>/     a build in progress (removed if it fails)
    <cache>/.jobs/<job id>/                      spec.json, job.log, state.json of each job
    <cache>/.logs/                               vLLM logs, one per replica

A variant counts as built only when its folder holds ``report.json``; the report is written
inside the staging folder, which is then renamed into place in one step. Kernel tuning results
are added to the report later (``kernel_tuning``), by a temporary file and ``os.replace``; an
unquantized variant (``method: none``) gets a folder holding only that report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from serving.manifest import Variant

REPORT = "report.json"
TUNING = "kernel_tuning"


class VariantStore:
    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir

    def variant_dir(self, model: str, name: str, variant: Variant) -> Path:
        return self.root / model / f"{name}-{variant.recipe_hash()}"

    def is_built(self, model: str, name: str, variant: Variant) -> bool:
        return (self.variant_dir(model, name, variant) / REPORT).is_file()

    def report(self, model: str, name: str, variant: Variant) -> dict[str, Any] | None:
        path = self.variant_dir(model, name, variant) / REPORT
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data

    def tuning(self, model: str, name: str, variant: Variant) -> dict[str, Any]:
        """Kernel tuning results of a variant, by ``<GPU>|vllm <version>``."""
        found: dict[str, Any] = (self.report(model, name, variant) or {}).get(TUNING) or {}
        return found

    def save_tuning(
        self, model: str, name: str, variant: Variant, key: str, result: dict[str, Any]
    ) -> None:
        """Add one tuning result to the variant's report (atomically: temp file, rename)."""
        if variant.quantized and not self.is_built(model, name, variant):
            raise ValueError(f"{model}:{name} is not built: nothing to add tuning results to")
        folder = self.variant_dir(model, name, variant)
        folder.mkdir(parents=True, exist_ok=True)
        report = self.report(model, name, variant) or {"model": model, "variant": name}
        report[TUNING] = {**(report.get(TUNING) or {}), key: result}
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(report, indent=2) + "\n")
            Path(tmp).replace(folder / REPORT)  # os.replace: atomic
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def staging_dir(self, model: str, name: str, variant: Variant, job_id: str) -> Path:
        path = self.root / model / ".staging" / f"{name}-{variant.recipe_hash()}-{job_id}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def job_dir(self, job_id: str) -> Path:
        path = self.root / ".jobs" / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_dir(self) -> Path:
        path = self.root / ".logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, staging: Path, final: Path, report: dict[str, Any]) -> None:
        """Write the report into the staging folder, then rename it into place."""
        (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # a stale, report-less leftover of an older crash
            shutil.rmtree(final)
        staging.rename(final)

    @staticmethod
    def discard(staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
