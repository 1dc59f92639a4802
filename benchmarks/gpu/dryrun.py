"""Stand-ins for a dry run of experiment.py on a CPU machine: no GPU, no vLLM, no quantizer.

A fake ``nvidia-smi`` (H100s), the fake vLLM of tests/fakes (it logs the kernel that
VLLM_DISABLED_KERNELS leaves and decodes at that kernel's pace), a fake quantizer that writes
a compressed-tensors W4A16 config, and model folders holding only ``config.json``. What runs
for real: the gateway, the fleet, jobs, the tuner, placement, the benchmark client, the
result files. It proves the orchestration, never speed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=index,name,compute_cap,memory.total*)
    i=0; while [ $i -lt {gpus} ]; do echo "$i, NVIDIA H100 80GB HBM3, 9.0, 81559"; i=$((i+1)); done ;;
  *--query-compute-apps*) ;;
  *) echo "fake nvidia-smi: {gpus} x NVIDIA H100 80GB HBM3" ;;
esac
"""
QUANTIZER = """
import json, sys, time
from pathlib import Path
spec = json.loads(Path(sys.argv[1]).read_text())
print('QUANTGATE_PROGRESS {"stage": "calibrate"}', flush=True)
time.sleep(1.0)
out = Path(spec["output"]); out.mkdir(parents=True, exist_ok=True)
group = {"weights": {"num_bits": 4, "type": "int"}, "input_activations": None}
qc = {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}
(out / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
print('QUANTGATE_RESULT {"load_s": 0.1, "quantize_s": 1.0, "total_s": 1.1, "device": "fake"}')
"""


def prepare(work: Path, gpus: int) -> dict[str, str]:
    """Write the stand-ins under WORK/fakebin; the environment that puts them in place."""
    fakebin = work / "fakebin"
    fakebin.mkdir(parents=True, exist_ok=True)
    _script(fakebin / "nvidia-smi", SMI.replace("{gpus}", str(gpus)))
    fakes = ROOT / "tests" / "fakes"
    _script(
        fakebin / "vllm-python", f'#!/bin/sh\nPYTHONPATH="{fakes}" exec "{sys.executable}" "$@"\n'
    )
    (fakebin / "fake_quantize.py").write_text(QUANTIZER)
    # called as: quant-python -m serving.worker.quantize SPEC
    _script(fakebin / "quant-python",
            f'#!/bin/sh\nexec "{sys.executable}" "{fakebin / "fake_quantize.py"}" "$3"\n')  # fmt: skip
    return {
        "PATH": f"{fakebin}:{os.environ['PATH']}",
        "QUANTGATE_VLLM_PYTHON": str(fakebin / "vllm-python"),
        "QUANTGATE_QUANTIZER_PYTHON": str(fakebin / "quant-python"),
        "FAKE_KERNELS": "MacheteLinearKernel,MarlinLinearKernel",
        # Marlin faster alone, Machete with many streams, as on Hopper
        "FAKE_KERNEL_ITL_S": "MacheteLinearKernel=0.004+0.00002,MarlinLinearKernel=0.002+0.0002",
        "FAKE_ITL_S": "0.003",
        "FAKE_START_DELAY_S": "1",
    }


def models(out: Path, formats: list[str]) -> dict[str, Path]:
    """Model folders with only a config.json (all the fakes read)."""
    made = {}
    for fmt in formats:
        folder = out / fmt
        folder.mkdir(parents=True, exist_ok=True)
        qc = {
            "gptq": {"quant_method": "gptq", "bits": 4},
            "awq": {"quant_method": "awq", "bits": 4},
        }
        cfg = {"model_type": "llama", **({"quantization_config": qc[fmt]} if fmt in qc else {})}
        (folder / "config.json").write_text(json.dumps(cfg))
        made[fmt] = folder
    return made


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
