"""How a worker process talks to its caller: one JSON object per stdout line.

    QUANTGATE_PROGRESS {"stage": "quantize", "layers_done": 2, "layers_total": 4}
    QUANTGATE_RESULT {...}          the last line of a clean run

Anything else on stdout or stderr is log text. A worker that cannot do its work exits with a
non-zero status and a one-line reason as the last line of stderr (``fail``). Stdlib only: the
gateway side imports this module too.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

PROGRESS = "QUANTGATE_PROGRESS "
RESULT = "QUANTGATE_RESULT "
FAILURE = "quantgate: "
GGUF_FILE = "model.gguf"  # the file a GGUF variant's folder holds (vLLM is pointed at it)
# Libraries that measure or build a method through transformers, which vLLM also imports to
# serve it: method -> (module, what to install). The worker checks its environment, the fleet
# vLLM's.
HF_QUANTIZER_PACKAGES = {
    "bitsandbytes": ("bitsandbytes", "bitsandbytes>=0.48.1"),
    "torchao": ("torchao", "torchao==0.18.0"),
}


def progress(stage: str, **fields: Any) -> None:
    print(PROGRESS + json.dumps({"stage": stage, **fields}), flush=True)


def result(data: dict[str, Any]) -> None:
    print(RESULT + json.dumps(data), flush=True)


def fail(reason: str) -> NoReturn:
    """Stop the worker: the reason becomes the job's error."""
    print(FAILURE + reason, file=sys.stderr, flush=True)
    raise SystemExit(2)


def parse(line: str) -> tuple[str, dict[str, Any]] | None:
    """``("progress" | "result", data)`` for a protocol line, else None."""
    for kind, prefix in (("progress", PROGRESS), ("result", RESULT)):
        if line.startswith(prefix):
            data: dict[str, Any] = json.loads(line[len(prefix) :])
            return kind, data
    return None
