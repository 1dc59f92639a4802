"""The quality gate: held-out perplexity of base and variant, and the manifest's budget.

A build measures the variant's perplexity and, once per source checkpoint, the base's; the base
value is kept under ``<cache>/.perplexity/`` keyed by a fingerprint of the source's files and
the evaluation settings, so later builds of the same model skip it. ``over_budget`` reads a
variant's report against its ``max_ppl_increase``: the worst evaluation domain's increase.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from serving.manifest import Variant


def fingerprint(source: Path, settings: str) -> str:
    """Changes when any file of the checkpoint changes (name, size or mtime), or the settings
    (window, stride, evaluation texts)."""
    h = hashlib.sha256(f"{source.resolve()}|{settings}".encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(source)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class PerplexityCache:
    """Base perplexities by source fingerprint, one small JSON file each."""

    def __init__(self, root: Path, settings: str) -> None:
        self.root = root
        self._settings = settings

    def _path(self, source: Path, texts: str) -> Path:
        return self.root / f"{fingerprint(source, self._settings + texts)}.json"

    def get(self, source: Path, texts: str = "") -> dict[str, Any] | None:
        """The base's perplexity; ``texts``: a model's own evaluation texts
        (``serving.evaluation.measure_key``), measured beside the built-in ones."""
        try:
            path = self._path(source, texts)
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data

    def put(self, source: Path, measured: dict[str, Any], texts: str = "") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(source, texts)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**measured, "source": str(source)}, indent=2), encoding="utf-8")
        tmp.replace(path)


def over_budget(variant: Variant, report: dict[str, Any] | None) -> str | None:
    """Why the gate refuses the built variant, or None when it may be served."""
    budget = variant.max_ppl_increase
    if budget is None or report is None:
        return None
    ppl = report.get("perplexity") or {}
    increase = ppl.get("increase")
    if increase is None:
        return f"no perplexity was measured for it, and its budget is +{budget:.1%}"
    if increase > budget:
        by_domain: dict[str, float] = ppl.get("increase_by_domain") or {}
        worst = max(by_domain, key=by_domain.__getitem__) if by_domain else "all"
        base, found = _domain(ppl["base"], worst), _domain(ppl["variant"], worst)
        where = "" if worst == "all" else f" on {worst}"
        return (
            f"held-out perplexity{where} {found:.2f} is {increase:+.1%} over the base's "
            f"{base:.2f}, beyond its budget of +{budget:.1%} (max_ppl_increase)"
        )
    return None


def _domain(measured: dict[str, Any], domain: str) -> float:
    found: float = (measured.get("domains") or {}).get(domain, measured)["perplexity"]
    return found
