"""A fake quantization worker for job-logic tests: same protocol as serving.worker.quantize.

Reports progress over FAKE_LAYERS layers in FAKE_QUANT_S seconds, then copies the source's
config.json into the output and reports perplexities (base 100, variant 100 * (1 +
FAKE_PPL_INCREASE)); a spec naming a ``served`` vLLM server (FP8) asks that server for its
models first. FAKE_QUANT_FAIL=1 makes it fail like a real worker would. A source's
recipe (a GGUF import, a Hub download) writes a small config.json and a base perplexity of 100
after FAKE_SOURCE_S seconds, or fails with FAKE_SOURCE_FAIL=1. It quantizes
nothing: real quantization is tested in tests/test_quantization.py and tests/test_demo_path.py.
"""

import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

spec = json.loads(Path(sys.argv[-1]).read_text())
if spec.get("recipe", {}).get("method") in ("import-gguf", "download"):  # a source
    time.sleep(float(os.environ.get("FAKE_SOURCE_S", "0.2")))
    if os.environ.get("FAKE_SOURCE_FAIL"):
        print("quantgate: fake import failure", file=sys.stderr, flush=True)
        sys.exit(2)
    Path(spec["output"]).mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 768,
              "num_attention_heads": 4, "head_dim": 64}  # fmt: skip
    (Path(spec["output"]) / "config.json").write_text(json.dumps(config))
    base = {"perplexity": 100.0, "tokens": 1000}
    print("QUANTGATE_RESULT " + json.dumps({"perplexity": {"base": base, "variant": None}}))
    sys.exit(0)
layers = int(os.environ.get("FAKE_LAYERS", "4"))
for done in range(layers + 1):
    progress = {"stage": "quantize", "layers_done": done, "layers_total": layers}
    print("QUANTGATE_PROGRESS " + json.dumps(progress), flush=True)
    time.sleep(float(os.environ.get("FAKE_QUANT_S", "0.2")) / (layers + 1))
if os.environ.get("FAKE_QUANT_FAIL"):
    print("RuntimeError: fake calibration failure", file=sys.stderr, flush=True)
    sys.exit(1)
Path(spec["output"]).mkdir(parents=True, exist_ok=True)
served = spec.get("served")
if served:  # measured through a running server (FP8): it must answer
    with urllib.request.urlopen(served["url"] + "/v1/models", timeout=10) as answer:
        listed = [card["id"] for card in json.load(answer)["data"]]
    assert served["model"] in listed, (served, listed)
else:
    shutil.copy(Path(spec["source"]) / "config.json", Path(spec["output"]) / "config.json")
increase = float(os.environ.get("FAKE_PPL_INCREASE", "0.01"))
measured = {"perplexity": 100.0, "tokens": 1000} if spec["evaluate"]["base"] else None
ppl = {"variant": {"perplexity": 100.0 * (1 + increase), "tokens": 1000}, "base": measured}
print("QUANTGATE_RESULT " + json.dumps({"quantize_s": 0.2, "perplexity": ppl}), flush=True)
