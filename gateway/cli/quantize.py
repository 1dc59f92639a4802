"""``quantgate quantize``: build one variant into a folder, with a progress bar.

The same worker and the same report as the gateway's jobs: the folder it writes is what a job
puts in the cache (weights, tokenizer, ``report.json`` with perplexity of base and variant).
Every check that can run before work starts does (method, bits, group size against the model's
layers, dataset): bad input exits with code 2 and one line per problem.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.cli.progress_bar import ProgressBar
from serving.build import (
    BuildSpec,
    WorkerCommand,
    folder_spec,
    run_build,
    source_spec,
    worker_command,
)
from serving.errors import InvalidRecipe
from serving.manifest import Backend, GgufType, Method, Variant
from serving.processes import tail
from serving.settings import ServingSettings, read_settings
from serving.sources import ModelSource
from serving.store import REPORT, read_report

CALIBRATION_FLAGS = {
    "dataset": "dataset",
    "split": "split",
    "text_field": "text_field",
    "calibration_samples": "samples",
    "max_seq_length": "max_seq_length",
    "seed": "seed",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a local checkpoint into a folder: what the gateway's jobs build",
        description=__doc__.splitlines()[0].replace("``", "") if __doc__ else None,
    )
    p.add_argument(
        "--model-path",
        required=True,
        help="the base: a local checkpoint folder, a GGUF file, or hf://org/name[@revision] "
        "(a GGUF file or Hub repository is prepared once under --cache-dir)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".quantgate/cache"),
        help="where a GGUF or Hub source is prepared (default .quantgate/cache)",
    )
    p.add_argument(
        "--token-env", help="hf:// sources: the variable holding a Hub token (default HF_TOKEN)"
    )
    p.add_argument("--output-dir", type=Path, required=True, help="new folder for the variant")
    offered = "|".join(m.value for m in Method if m.value != "none")
    p.add_argument(
        "--method",
        required=True,
        metavar="{" + offered.replace("|", ",") + "}",
        help="fp8 and bitsandbytes 4-bit are quantized by vLLM at load: nothing to build",
    )
    p.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        help="default: llmcompressor (gguf: llamacpp)",
    )
    p.add_argument(
        "--gguf-type",
        help="gguf: llama.cpp's type, "
        + ", ".join(t.value for t in GgufType)
        + " (default q4_k_m)",
    )
    p.add_argument(
        "--bits",
        type=int,
        help="weight bits (gptq/rtn/autoround: 2,3,4,8; awq: 2,3,4; w8a8: 8; gguf: 4,5,6,8; "
        "bitsandbytes: 8, built as LLM.int8 on a GPU; torchao: 4)",
    )
    p.add_argument("--activation-bits", type=int, choices=[8, 16], help="8: W4A8 (gptq, rtn)")
    p.add_argument(
        "--group-size", type=int, help="default 128 (w8a8: per channel); -1: per channel"
    )
    p.add_argument(
        "--symmetric", action=argparse.BooleanOptionalAction, help="default: yes, AWQ no"
    )
    p.add_argument("--ignore", nargs="+", help="layers left unquantized (default: lm_head)")
    p.add_argument(
        "--log",
        type=Path,
        help="keep this run's whole log in this file, written anew: a GGUF or Hub source's "
        "preparation, then the build (default: not kept)",
    )
    cal = p.add_argument_group("calibration (gptq, awq, w8a8, autoround)")
    cal.add_argument(
        "--dataset",
        type=Path,
        help=".txt/.jsonl file, folder, or save_to_disk folder; default: built-in text",
    )
    cal.add_argument("--split", help="split of a datasets folder (default train)")
    cal.add_argument("--text-field", help="text column of .jsonl and datasets (default text)")
    cal.add_argument("--calibration-samples", type=int, help="windows of text (default 64)")
    cal.add_argument("--max-seq-length", type=int, help="tokens per window (default 256)")
    cal.add_argument("--seed", type=int, help="offsets of the windows (default 0)")
    p.set_defaults(func=quantize)


def variant_from_args(args: argparse.Namespace) -> Variant:
    """The recipe the flags describe, validated like a manifest's variant (ValidationError)."""
    fields = (
        "method", "backend", "bits", "activation_bits", "group_size", "symmetric", "gguf_type"
    )  # fmt: skip
    data: dict[str, Any] = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.ignore is not None:
        data["ignore"] = args.ignore
    calibration = {key: getattr(args, flag) for flag, key in CALIBRATION_FLAGS.items()}
    calibration = {k: v for k, v in calibration.items() if v is not None}
    if calibration:
        data["calibration"] = calibration
    return Variant.model_validate(data, context={"base_dir": Path.cwd()})


def quantize(args: argparse.Namespace) -> int:
    try:
        variant = variant_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(
                f"quantgate: invalid recipe: {where + ': ' if where else ''}"
                f"{err['msg'].removeprefix('Value error, ')}",
                file=sys.stderr,
            )
        return 2
    try:
        origin = ModelSource.parse(args.model_path, Path.cwd())
    except ValueError as exc:
        print(f"quantgate: --model-path {exc}", file=sys.stderr)
        return 2
    settings = read_settings(ServingSettings)
    with tempfile.TemporaryDirectory(prefix="quantgate-") as tmp:
        work = Path(tmp)  # the worker's spec and path: never beside the user's log
        log = args.log.resolve() if args.log else work / "job.log"
        command = worker_command(settings.quantizer_python, work, settings.quantizer_pythonpath)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(b"")  # this run's log: each stage adds to it
            source, base = _prepared(origin, args, log, work, command)
            spec = folder_spec(source, variant, args.output_dir, log, work, base)
        except (InvalidRecipe, OSError) as exc:
            print(f"quantgate: {exc}", file=sys.stderr)
            return 2
        except _BuildFailed as exc:
            return exc.code
        code, report = _run(spec, command, "nothing written")
        if report is None:
            return code
    print(summary(report))
    return 0


class _BuildFailed(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _prepared(
    origin: ModelSource, args: argparse.Namespace, log: Path, work: Path, command: WorkerCommand
) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint folder to quantize and its measured base perplexity: a folder as it is,
    a GGUF file or Hub repository prepared under ``--cache-dir`` first (once)."""
    if origin.prepared_here:
        return origin.checkpoint(Path()), None
    spec = source_spec(origin, args.cache_dir.resolve(), log, work, "cli", args.token_env)
    if (spec.final / REPORT).is_file():
        print(f"source {origin}: prepared already in {spec.final}", file=sys.stderr)
    else:
        print(f"source {origin}: preparing into {spec.final}", file=sys.stderr)
        code, report = _run(spec, command, "the source was not prepared")
        if report is None:
            raise _BuildFailed(code)
    found = read_report(spec.final) or {}
    return spec.final, (found.get("perplexity") or {}).get("base")


def _run(spec: BuildSpec, command: WorkerCommand, lost: str) -> tuple[int, dict[str, Any] | None]:
    """Run one worker with a progress bar: (0, report), or (exit code, None) after saying why."""
    bar = ProgressBar()
    try:
        report = asyncio.run(_build(spec, command, bar))
    except RuntimeError as exc:
        bar.close()
        print(f"quantgate: {exc}\n--- log tail ---\n{tail(spec.log_path)}", file=sys.stderr)
        return 1, None
    except (KeyboardInterrupt, asyncio.CancelledError):
        bar.close()
        print(f"quantgate: stopped; the worker was killed and {lost}", file=sys.stderr)
        return 130, None
    bar.close()
    return 0, report


async def _build(spec: BuildSpec, command: WorkerCommand, bar: ProgressBar) -> dict[str, Any]:
    """Run the build; SIGTERM cancels it like Ctrl-C does (worker killed, staging removed)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_build(spec, command, bar.update)


def summary(report: dict[str, Any]) -> str:
    ppl = report["perplexity"]
    lines = [
        f"wrote {report['path']} ({report['size_bytes'] / 2**20:.1f} MiB; "
        f"source {report['source_size_bytes'] / 2**20:.1f} MiB) in {report['build_s']:.0f} s",
    ]
    if ppl["variant"]:
        base = f"{ppl['base']['perplexity']:.3f}" if ppl["base"] else "?"
        change = f" ({ppl['increase']:+.2%})" if ppl["increase"] is not None else ""
        lines.append(
            f"held-out perplexity: base {base}, variant {ppl['variant']['perplexity']:.3f}{change}"
        )
    lines.append(f"report: {Path(report['path']) / 'report.json'}")
    return "\n".join(lines)
