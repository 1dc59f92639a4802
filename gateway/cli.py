"""The ``quantgate`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gateway import bench_cli, quantize_cli
from serving.errors import ManifestError
from serving.manifest import Manifest, load_manifest
from serving.settings import ServingSettings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ManifestError as exc:
        print(f"quantgate: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantgate",
        description="Serve a model manifest as an OpenAI API over quantized vLLM variants.",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway on a manifest")
    serve.add_argument("manifest", type=Path)
    serve.add_argument("--host", help="listen address (default: QUANTGATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: QUANTGATE_PORT or 8000)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check", help="validate a manifest; errors name file, line and field")
    check.add_argument("manifest", type=Path)
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print the manifest's JSON Schema")
    schema.set_defaults(func=_schema)

    make = sub.add_parser(
        "make-model",
        help="build a small Llama model here (local tokenizer, brief training; no downloads)",
    )
    make.add_argument("out", type=Path)
    make.add_argument("--train-steps", type=int, default=300)
    make.set_defaults(func=_make_model)

    quantize_cli.register(sub)
    bench_cli.register(sub)

    demo = sub.add_parser(
        "demo", help="start the gateway on a manifest, send one chat completion, print the result"
    )
    demo.add_argument("manifest", type=Path)
    demo.add_argument("--model", default="tiny:gptq-w4a16")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(func=_demo)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from serving.build import worker_command
    from serving.fleet import Fleet
    from serving.hardware import Hardware
    from serving.jobs import JobRunner
    from serving.store import VariantStore

    manifest = load_manifest(args.manifest)
    gateway = GatewaySettings()
    serving = ServingSettings()
    _require_python(serving.vllm_python, "QUANTGATE_VLLM_PYTHON", "vLLM")
    _require_python(serving.quantizer_python, "QUANTGATE_QUANTIZER_PYTHON", "the quantizer")
    store = VariantStore(manifest.cache_dir)
    command = worker_command(serving.quantizer_python, store.root / ".runtime")
    jobs = JobRunner(store, command, serving.max_concurrent_jobs)
    fleet = Fleet(manifest, store, jobs, serving.vllm_python, Hardware.detect(), serving.vllm_host)
    app = create_app(fleet, gateway)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # health polls, one line each
    uvicorn.run(
        app,
        host=args.host or gateway.host,
        port=args.port or gateway.port,
        log_level=args.log_level,
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from serving.errors import InvalidRecipe
    from serving.precheck import check_build

    manifest = load_manifest(args.manifest)
    problems = 0
    for name, model in manifest.models.items():
        variants = ", ".join(
            f"{v} ({spec.method.value})" + (" [default]" if v == model.default_variant else "")
            for v, spec in model.variants.items()
        )
        print(f"{name}: {variants}")
        for v, spec in model.variants.items():
            try:
                check_build(model.source, spec)
            except InvalidRecipe as exc:
                problems += 1
                print(f"  {name}:{v}: cannot be built: {exc}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.manifest}: ok")
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Manifest.model_json_schema(), indent=2))
    return 0


def _make_model(args: argparse.Namespace) -> int:
    from serving.build import worker_pythonpath

    python = ServingSettings().quantizer_python
    _require_python(python, "QUANTGATE_QUANTIZER_PYTHON", "the quantizer")
    command = [str(python), "-m", "serving.worker.make_model", str(args.out)]
    command += ["--train-steps", str(args.train_steps)]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(worker_pythonpath(Path(tmp)))}
        return subprocess.call(command, env=env)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    load_manifest(args.manifest)
    return run_demo(args.manifest, args.model, args.port)


def _require_python(python: Path, variable: str, what: str) -> None:
    if not python.exists():
        raise SystemExit(
            f"quantgate: {what} environment not found at {python}; run `make install` "
            f"or set {variable} to its python"
        )


if __name__ == "__main__":
    sys.exit(main())
