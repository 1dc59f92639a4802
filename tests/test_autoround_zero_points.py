"""An asymmetric AutoRound variant keeps AutoRound's zero points (serving/worker/autoround.py):
llm-compressor 0.14's AutoRoundModifier leaves every ``weight_zero_point`` at 0.

Real llm-compressor AutoRound (200 iterations per block) on the small trained Llama (4 layers)
in the quantizer environment, W4A16 group 64 asymmetric, 8 windows of 256 tokens; about a
minute on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"
TINY = ROOT / ".quantgate" / "models" / "tiny"  # make tiny-model
SCRIPT = """\
import json, sys, torch
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from transformers import LlamaForCausalLM
from serving.worker import compressor

model = LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
original = {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"}
recipe = {"method": "autoround", "bits": 4, "activation_bits": 16, "group_size": 64,
          "symmetric": False, "ignore": ["lm_head"]}
steps = compressor.modifiers(recipe, offload_cache=False)
rows = [[(i * 7 + j) % 1000 for j in range(256)] for i in range(8)]
compressor._oneshot(model, steps, rows, offload=False, max_batch=8)

def error(w, scale, zp, args):
    return float((fake_quantize(w, scale, zp, args) - w).norm() / w.norm())

found = []
for name, m in model.named_modules():
    if name in original:
        args, zp, w = m.quantization_scheme.weights, m.weight_zero_point, original[name]
        found.append({"zp": sorted({int(z) for z in zp.flatten()}),
                      "error": error(w, m.weight_scale, zp, args),
                      "error_zp0": error(w, m.weight_scale, torch.zeros_like(zp), args)})
print(json.dumps(found))
"""


def test_asymmetric_autoround_writes_its_zero_points() -> None:
    done = subprocess.run([str(QUANT_PYTHON), "-c", SCRIPT, str(TINY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    layers = json.loads(done.stdout.splitlines()[-1])
    assert len(layers) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers
    for layer in layers:
        assert len(layer["zp"]) > 1 and all(-8 <= z <= 7 for z in layer["zp"]), layer["zp"]
    # the carried zero points fit the tuned scales: the weights' error is lower than with 0
    assert sum(x["error"] for x in layers) < sum(x["error_zp0"] for x in layers)
    assert max(x["error"] for x in layers) < 0.15
