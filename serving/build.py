"""One build: the worker process that quantizes and measures a variant, and its report.

``run_build`` writes the spec into the build's own folder (``work_dir``: a job's folder, or a
temporary one), runs ``python -m serving.worker.quantize`` with only ``serving`` on its path,
adds its output to the log (the stages of one command share one log) while reading progress
from it, and on a clean exit writes ``report.json`` into the staging folder and renames that
into place. The
gateway's jobs and ``quantgate quantize`` both build through here, so both produce the same
folder and the same report. Cancelling the awaiting task kills the worker's process group.
A ``remote`` runner (a Kubernetes Job) may run the worker instead; the report and the commit
stay here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from serving.errors import InvalidRecipe
from serving.manifest import Variant, recipe_hash, writes_weights
from serving.precheck import check_build
from serving.processes import kill_group, tail
from serving.sources import SOURCES_DIR, ModelSource, SourceKind
from serving.store import commit, dir_size, discard
from serving.worker import protocol

WORKER_PACKAGE = Path(__file__).resolve().parent
EVAL_CONTEXT, EVAL_STRIDE = 256, 128  # held-out perplexity: window and stride, in tokens
# What the held-out measure reads (serving.worker.perplexity); part of the key under which a
# base's perplexity is kept, so a change of texts measures the base again.
EVAL_TEXTS = "docs:4096+prose+chat+code/1"

WorkerCommand = Callable[[Path], Sequence[str]]
OnProgress = Callable[[dict[str, Any]], None]
RemoteWorker = Callable[["BuildSpec", OnProgress], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class BuildSpec:
    source: Path | str  # a checkpoint folder; for a source's job, the GGUF file or hf:// name
    recipe: dict[str, Any]
    recipe_hash: str
    staging: Path
    final: Path
    log_path: Path  # added to, never truncated
    work_dir: Path  # the build's own folder: the worker's spec.json is written there
    base_perplexity: dict[str, Any] | None = None  # known already: the worker skips the base
    labels: dict[str, str | None] | None = None  # model, variant, job_id for the report
    keep_staging: bool = False  # on failure (a download resumes from what it holds)
    evaluation: dict[str, Any] | None = None  # the model's own texts (serving.evaluation)
    served: dict[str, str] | None = None  # measure through this vLLM server: url, model

    def worker_spec(self) -> dict[str, Any]:
        evaluate = {"context": EVAL_CONTEXT, "stride": EVAL_STRIDE, "texts": self.evaluation}
        spec = {
            "source": str(self.source),
            "output": str(self.staging),
            "recipe": self.recipe,
            "evaluate": {**evaluate, "base": self.base_perplexity is None},
        }
        return {**spec, "served": self.served} if self.served else spec


def worker_pythonpath(path_dir: Path) -> Path:
    """A folder holding only a link to ``serving``: the quantizer environment's PYTHONPATH.

    Nothing else of the gateway's environment (pydantic, ...) leaks into the worker's.
    """
    path_dir.mkdir(parents=True, exist_ok=True)
    link = path_dir / "serving"
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            link.symlink_to(WORKER_PACKAGE, target_is_directory=True)
    return path_dir


def worker_command(python: Path, runtime_dir: Path, extra_path: str | None = None) -> WorkerCommand:
    """The real worker: the quantizer interpreter with only ``serving`` on its path, plus
    ``extra_path`` (QUANTGATE_QUANTIZER_PYTHONPATH) when its packages live elsewhere."""
    path_dir = worker_pythonpath(runtime_dir / "pythonpath")
    pythonpath = f"{path_dir}:{extra_path}" if extra_path else str(path_dir)

    def command(spec: Path) -> Sequence[str]:
        return [
            "env",
            f"PYTHONPATH={pythonpath}",
            str(python),
            "-m",
            "serving.worker.quantize",
            str(spec),
        ]

    return command


async def run_build(
    spec: BuildSpec,
    command: WorkerCommand,
    on_progress: OnProgress,
    on_start: Callable[[int], None] | None = None,
    remote: RemoteWorker | None = None,
) -> dict[str, Any]:
    """Build the variant; return its report. Raises RuntimeError with the cause on failure
    (JobFailed from a remote runner)."""
    started = time.time()
    try:
        if remote is None:
            result = await _run_worker(spec, command, on_progress, on_start)
        else:
            result = await remote(spec, on_progress)
        built = writes_weights(spec.recipe)  # else a measure: nothing to write but the report
        if result is None or (built and not (spec.staging / "config.json").is_file()):
            raise RuntimeError("the quantizer finished but wrote no model")
        report = make_report(spec, result, started)
        commit(spec.staging, spec.final, report)
    except BaseException:
        if not spec.keep_staging:
            discard(spec.staging)
        raise
    return report


async def _run_worker(
    spec: BuildSpec,
    command: WorkerCommand,
    on_progress: OnProgress,
    on_start: Callable[[int], None] | None,
) -> dict[str, Any] | None:
    spec_path = spec.work_dir / "spec.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec.worker_spec(), indent=2), encoding="utf-8")
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *command(spec_path), stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True
        )
        if on_start:
            on_start(proc.pid)
        try:
            result = await _follow(proc, log, on_progress)
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                kill_group(proc.pid)
                await proc.wait()
    if code != 0:
        raise RuntimeError(_exit_reason(code, spec.log_path))
    return result


async def _follow(
    proc: asyncio.subprocess.Process, log: IO[bytes], on_progress: OnProgress
) -> dict[str, Any] | None:
    """Copy the worker's stdout into the log, reading progress and the result on the way."""
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    async for raw in proc.stdout:
        log.write(raw)
        log.flush()
        message = protocol.parse(raw.decode("utf-8", "replace").strip())
        if message and message[0] == "progress":
            on_progress(message[1])
        elif message:
            result = message[1]
    return result


def _exit_reason(code: int, log_path: Path) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"quantizer was killed by signal {name}; no variant was written"
    lines = [line for line in tail(log_path, 50).splitlines() if line.strip()]
    reasons = [line for line in lines if line.startswith(protocol.FAILURE)]
    last = (
        reasons[-1][len(protocol.FAILURE) :] if reasons else (lines[-1] if lines else "no output")
    )
    return f"quantizer exited with code {code}: {last}"


def make_report(spec: BuildSpec, result: dict[str, Any], started: float) -> dict[str, Any]:
    ppl = result.pop("perplexity", None) or {}
    base = ppl.get("base") or spec.base_perplexity
    variant = ppl.get("variant")
    by_domain = increases(base, variant)
    increase = max(by_domain.values()) if by_domain else None
    return {
        **(spec.labels or {}),
        "source": str(spec.source),
        "recipe": spec.recipe,
        "recipe_hash": spec.recipe_hash,
        "started_at": started,
        "built_at": time.time(),
        "build_s": round(time.time() - started, 2),
        "path": str(spec.final),
        # measured at load (bitsandbytes): vLLM reads the base's files, the folder has the report
        "size_bytes": _size(spec.staging if writes_weights(spec.recipe) else spec.source),
        "source_size_bytes": _size(spec.source),
        "perplexity": {
            "base": base,
            "variant": variant,
            "increase": increase,  # the worst domain's: what the quality gate reads
            "increase_by_domain": by_domain,
        },
        "quantizer": result,
        **({"measured_through": spec.served["url"]} if spec.served else {}),  # FP8: what serves
    }


def increases(base: dict[str, Any] | None, variant: dict[str, Any] | None) -> dict[str, float]:
    """The variant's perplexity increase over the base's, per evaluation domain (one entry,
    ``all``, for measures made before there were domains)."""
    if not base or not variant:
        return {}
    pairs = {"all": (base, variant)}
    if "domains" in base and "domains" in variant:
        common = [d for d in base["domains"] if d in variant["domains"]]
        pairs = {d: (base["domains"][d], variant["domains"][d]) for d in common}
    return {d: round(v["perplexity"] / b["perplexity"] - 1, 6) for d, (b, v) in pairs.items()}


def _size(path: Path | str) -> int | None:
    """Bytes of a folder or a file; None for a Hub repository (measured once downloaded)."""
    if isinstance(path, str):
        return None
    return path.stat().st_size if path.is_file() else dir_size(path)


def folder_spec(
    source: Path,
    variant: Variant,
    output: Path,
    log_path: Path,
    work_dir: Path,
    base_perplexity: dict[str, Any] | None = None,
) -> BuildSpec:
    """``quantgate quantize``: the same build as a job's, into ``output`` instead of the cache.

    Raises InvalidRecipe before any work when the recipe cannot be built from ``source``."""
    if output.exists():
        raise InvalidRecipe(f"output {output} exists; remove it or pick another folder")
    if not variant.needs_build:
        raise InvalidRecipe(f"method {variant.method.value!r} has nothing to build")
    check_build(source, variant)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging"
    discard(staging)  # a leftover of a build that was killed
    return BuildSpec(
        source=source.resolve(),
        recipe=variant.recipe(),
        recipe_hash=variant.recipe_hash(),
        staging=staging,
        final=output.resolve(),
        log_path=log_path,
        work_dir=work_dir,
        base_perplexity=base_perplexity,
        labels={"model": source.name, "variant": None, "job_id": None},
    )


def source_spec(
    origin: ModelSource,
    cache_dir: Path,
    log_path: Path,
    work_dir: Path,
    job_id: str,
    token_env: str | None = None,
    model: str | None = None,
    evaluation: dict[str, Any] | None = None,
) -> BuildSpec:
    """Preparing a GGUF or Hub source into ``<cache>/.sources/``: a staging folder per job,
    or (a Hub download) one per source that outlives a failed job, so the next one resumes.

    Raises OSError when a GGUF file cannot be read (its hash names the folder)."""
    final, hub = origin.checkpoint(cache_dir), origin.kind is SourceKind.HUB
    root = cache_dir / SOURCES_DIR
    staging = (
        root / ".partial" / final.name if hub else root / ".staging" / f"{final.name}-{job_id}"
    )
    staging.parent.mkdir(parents=True, exist_ok=True)
    recipe = origin.recipe(token_env)
    return BuildSpec(
        source=origin.path or str(origin),  # a GGUF file, or hf://org/name
        recipe=recipe,
        recipe_hash=recipe_hash(recipe),
        staging=staging,
        final=final,
        log_path=log_path,
        work_dir=work_dir,
        labels={"model": model, "variant": None, "job_id": job_id},
        keep_staging=hub,
        evaluation=evaluation,
    )
