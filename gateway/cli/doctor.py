"""``quantgate doctor``: what this host can serve, and what to fix first."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from serving.doctor import Diagnosis, Probe, diagnose
from serving.settings import ServingSettings, read_settings


def register(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check this host: GPUs, the vLLM and quantizer environments, the kernels here",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = read_settings(ServingSettings)
    found = asyncio.run(diagnose(s.vllm_python, s.quantizer_python, s.quantizer_pythonpath))
    print(json.dumps(found.as_dict(), indent=2) if args.json else report(found))
    return 1 if found.problems else 0


def report(d: Diagnosis) -> str:
    hw = d.hardware
    gpus = ", ".join(
        f"{g.index}: {g.name} (compute {g.capability / 10:.1f}, {g.memory_mib} MiB)"
        for g in hw.gpus
    )
    avx = "with" if "avx512f" in hw.cpu_flags else "without"
    host = f"{len(hw.gpus)} GPU(s): {gpus}" if hw.gpus else f"no GPU; a CPU {avx} AVX-512"
    lines = [
        f"host:      {host}",
        _env("vLLM", d.vllm),
        _env("quantizer", d.quantizer),
        "kernels here:",
    ]
    width = max(map(len, d.kernels))
    lines += [f"  {name:<{width}}  {kernel}" for name, kernel in d.kernels.items()]
    lines += [f"problem:   {p}" for p in d.problems] or ["ok: this host can serve and build"]
    return "\n".join(lines)


def _env(name: str, probe: Probe) -> str:
    if probe.error:
        return f"{name + ':':<10} {probe.python}: {probe.error}"
    facts = ", ".join(f"{k} {v}" for k, v in probe.found.items())
    return f"{name + ':':<10} {probe.python}: {facts}"
