"""The ``quantgate`` command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import bench as bench_cli
from gateway.cli import doctor as doctor_cli
from gateway.cli import quantize as quantize_cli
from gateway.cli import recommend as recommend_cli
from gateway.logs import configure
from serving.errors import ManifestError, SettingsError
from serving.fleet import Fleet
from serving.manifest import Manifest, Model, key_lines, load_manifest
from serving.settings import ServingSettings, read_settings

if TYPE_CHECKING:
    import uvicorn
    from kubernetes.aio.client import ApiClient

    from gateway.settings import GatewaySettings
    from serving.fleet import Scheduled
    from serving.kube.settings import KubernetesSettings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ManifestError as exc:
        print(f"quantgate: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"quantgate {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `quantgate ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantgate",
        description="Serve a model manifest as an OpenAI API over quantized vLLM variants.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway on a manifest")
    serve.add_argument("manifest", type=Path, help="the model manifest (YAML)")
    serve.add_argument("--host", help="listen address (default: QUANTGATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: QUANTGATE_PORT or 8000)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="least severe events logged (default info: every job, vLLM, circuit and swap event)",
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines (default) or JSON lines, one object per event",
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        help="reload the manifest when the file changes (also: SIGHUP, POST /admin/reload)",
    )
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check", help="validate a manifest; errors name file, line and field")
    check.add_argument("manifest", type=Path, help="the model manifest (YAML)")
    check.add_argument(
        "--probe",
        action="store_true",
        help="also ask each static upstream's /v1/models what it serves",
    )
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print the manifest's JSON Schema")
    schema.set_defaults(func=_schema)

    make = sub.add_parser(
        "make-model",
        help="build a small Llama model here (local tokenizer, brief training; no downloads)",
    )
    make.add_argument("out", type=Path, help="the folder to write the model into")
    make.add_argument(
        "--train-steps", type=int, default=300, help="training steps on the built-in text (300)"
    )
    make.set_defaults(func=_make_model)

    quantize_cli.register(sub)
    bench_cli.register(sub)
    recommend_cli.register(sub)
    doctor_cli.register(sub)

    demo = sub.add_parser(
        "demo", help="start the gateway on a manifest, send one chat completion, print the result"
    )
    demo.add_argument("manifest", type=Path, help="the model manifest (YAML)")
    demo.add_argument(
        "--model", default="auto", help="model[:variant], or auto: the first servable quantized one"
    )
    demo.add_argument(
        "--port", type=int, default=8765, help="the gateway's port for the demo (default 8765)"
    )
    demo.set_defaults(func=_demo)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from gateway.settings import GatewaySettings

    manifest = load_manifest(args.manifest)
    gateway = read_settings(GatewaySettings)
    serving = read_settings(ServingSettings)
    if serving.launcher == "local":  # a manifest of upstreams only needs neither
        local = [m for m in manifest.models.values() if m.source is not None]
        if local:
            _require_python(serving.vllm_python, "QUANTGATE_VLLM_PYTHON", "vLLM")
        if any(_needs_quantizer(m) for m in local):
            quantizer = serving.quantizer_python
            _require_python(quantizer, "QUANTGATE_QUANTIZER_PYTHON", "the quantizer")
    configure(args.log_level, args.log_format)
    uvloop.run(_run_gateway(args, manifest, gateway, serving))
    return 0


async def _run_gateway(
    args: argparse.Namespace, manifest: Manifest, gateway: GatewaySettings, serving: ServingSettings
) -> None:
    import uvicorn

    from gateway.app import create_app

    async with _fleet(manifest, serving) as fleet:
        app = create_app(fleet, gateway, None, args.manifest.resolve(), 2.0 if args.watch else None)
        host, port = args.host or gateway.host, args.port or gateway.port
        await uvicorn.Server(server_config(app, host, port, args.log_level)).serve()


def server_config(app: Callable[..., Any], host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn as the gateway runs it. Its own lines (start-up, errors with their tracebacks)
    go to the handler ``gateway.logs.configure`` set up, text or JSON like every other line,
    rather than to the text handlers uvicorn would install."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def _needs_quantizer(model: Model) -> bool:
    """Whether a job may run for it: a variant to build or measure, or a source to prepare."""
    prepared = model.origin.prepared_here
    return not prepared or any(v.needs_job for v in model.variants.values())


@asynccontextmanager
async def _fleet(manifest: Manifest, serving: ServingSettings) -> AsyncIterator[Fleet]:
    """The fleet for ``QUANTGATE_LAUNCHER``: child processes here, or pods on Kubernetes."""
    from serving.build import worker_command
    from serving.fleet import open_fleet
    from serving.hardware import Hardware

    worker = worker_command(
        serving.quantizer_python, manifest.cache_dir / ".runtime", serving.quantizer_pythonpath
    )
    if serving.launcher == "local":
        yield open_fleet(
            manifest, worker, serving.vllm_python, Hardware.detect(), host=serving.vllm_host,
            max_concurrent_jobs=serving.max_concurrent_jobs,
        )  # fmt: skip
        return
    from serving.kube.client import connect
    from serving.kube.settings import KubernetesSettings

    kube = read_settings(KubernetesSettings)
    api = await connect()
    try:
        # pods of the manifest the fleet serves now (a reload's), not of the first one
        scheduled = _scheduled(serving.launcher, api, kube, manifest, lambda: fleet.manifest)
        fleet = open_fleet(
            manifest, worker, serving.vllm_python, kube.hardware(),
            max_concurrent_jobs=serving.max_concurrent_jobs, scheduled=scheduled,
        )  # fmt: skip
        yield fleet
    finally:
        await api.close()  # type: ignore[no-untyped-call]


def _scheduled(
    launcher: str,
    api: ApiClient,
    kube: KubernetesSettings,
    manifest: Manifest,
    current: Callable[[], Manifest],
) -> Scheduled:
    """vLLM and jobs on Kubernetes: Deployments and Jobs the gateway creates (``kubernetes``),
    or the chart's own backends, found and never changed (``kubernetes-static``)."""
    from serving.fleet import Scheduled

    if launcher == "kubernetes-static":
        from serving.kube import static

        backends = static.StaticBackends(api, kube, static.StaticSettings().labels())
        return static.scheduled(backends)
    from serving.kube import runtime
    from serving.kube.launcher import KubernetesLauncher
    from serving.kube.volume import CacheVolume

    dynamic = KubernetesLauncher(api, kube)
    volume = CacheVolume(kube.cache_pvc, manifest.cache_dir)
    return Scheduled(runtime.launch(dynamic, volume, current), runtime.remote_job(dynamic, volume))


def _check(args: argparse.Namespace) -> int:
    manifest, lines = load_manifest(args.manifest), key_lines(args.manifest)
    problems = 0
    for name, model in manifest.models.items():
        variants = ", ".join(
            f"{v} ({spec.method.value})" + (" [default]" if v == model.default_variant else "")
            for v, spec in model.variants.items()
        )
        print(f"{name}: {variants}")
        source_line = lines.get(("models", name, "source"), 1)
        problems += _check_model(name, model, f"{args.manifest}:{source_line}")
        if args.probe:
            problems += _probe_upstreams(name, model)
    if not manifest.models:
        print("no models: the gateway serves nothing until a reload adds some")
    if problems:
        return 2
    print(f"{args.manifest}: ok")
    return 0


def _check_model(name: str, model: Model, where: str) -> int:
    """Print what cannot be built from the model's source (``where``: the file and line of
    ``source``); the number of problems."""
    from serving.errors import InvalidRecipe
    from serving.precheck import check_build, check_source
    from serving.store import REPORT

    if model.source is None:
        return 0
    try:
        check_source(model.origin)
    except InvalidRecipe as exc:
        local = [v for v, spec in model.variants.items() if spec.upstream is None]
        print(f"{where}: models.{name}.source: {exc} (variants {', '.join(local)})",
              file=sys.stderr)  # fmt: skip
        return 1
    if not model.origin.prepared_here and not (model.source_path / REPORT).is_file():
        print(f"  {name}: source {model.source} is prepared on first use (into "
              f"{model.source_path}); the checks that read its config.json run then")  # fmt: skip
        return 0
    problems = 0
    for v, spec in model.variants.items():
        try:
            check_build(model.source_path, spec)
        except InvalidRecipe as exc:
            problems += 1
            print(f"  {name}:{v}: cannot be built: {exc}", file=sys.stderr)
    return problems


def _probe_upstreams(name: str, model: Model) -> int:
    """Ask each upstream of the model what it serves; the number of problems."""
    import httpx

    problems = 0
    for v, spec in model.variants.items():
        up = spec.upstream
        if up is None:
            continue
        try:
            answer = httpx.get(up.url + "/v1/models", headers=up.auth_headers(), timeout=10)
            served = [str(card["id"]) for card in answer.raise_for_status().json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            print(f"  {name}:{v}: upstream {up.url}/v1/models: {exc}", file=sys.stderr)
            problems += 1
            continue
        wanted = up.model or (served[0] if len(served) == 1 else None)
        if wanted not in served:
            need = f"model {up.model!r} is not among them" if up.model else "set upstream.model"
            print(f"  {name}:{v}: upstream {up.url} serves {', '.join(served)}: {need}",
                  file=sys.stderr)  # fmt: skip
            problems += 1
        else:
            print(f"  {name}:{v}: upstream {up.url} serves {wanted}")
    return problems


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Manifest.model_json_schema(), indent=2))
    return 0


def _make_model(args: argparse.Namespace) -> int:
    from serving.build import worker_pythonpath

    python = read_settings(ServingSettings).quantizer_python
    _require_python(python, "QUANTGATE_QUANTIZER_PYTHON", "the quantizer")
    command = [str(python), "-m", "serving.worker.make_model", str(args.out)]
    command += ["--train-steps", str(args.train_steps)]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(worker_pythonpath(Path(tmp)))}
        return subprocess.call(command, env=env)


def _demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import Gateway, client_key, run_demo
    from gateway.settings import GatewaySettings

    manifest = load_manifest(args.manifest)
    try:
        key = client_key(manifest.auth, os.environ)
    except ValueError as exc:
        print(f"quantgate demo: {exc}", file=sys.stderr)
        return 2
    admin = read_settings(GatewaySettings).admin_key
    admin_key = admin.get_secret_value() if admin is not None else None
    gateway = Gateway(f"http://127.0.0.1:{args.port}", key, admin_key)
    return run_demo(args.manifest, args.model, args.port, gateway)


def _require_python(python: Path, variable: str, what: str) -> None:
    if not python.exists():
        raise SystemExit(
            f"quantgate: {what} environment not found at {python}; run `make install` "
            f"or set {variable} to its python"
        )
