"""A fake quantization worker for job-queue tests: same protocol as serving.worker.quantize.

Copies the source's config.json into the output after FAKE_QUANT_S seconds; FAKE_QUANT_FAIL=1
makes it fail like a real worker would. Real quantization is tested in tests/test_demo_path.py.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
print('QUANTGATE_PROGRESS {"stage": "calibrate"}', flush=True)
time.sleep(float(os.environ.get("FAKE_QUANT_S", "0.2")))
if os.environ.get("FAKE_QUANT_FAIL"):
    print("RuntimeError: fake calibration failure", file=sys.stderr, flush=True)
    sys.exit(1)
Path(spec["output"]).mkdir(parents=True, exist_ok=True)
shutil.copy(Path(spec["source"]) / "config.json", Path(spec["output"]) / "config.json")
print('QUANTGATE_RESULT {"quantize_s": 0.2}', flush=True)
