"""AWQ's grid search measures its loss on a bounded share of the calibration, while the
activation statistics that shape its scales still see every token (serving/worker/awq.py).

Real llm-compressor AWQ on the small trained Llama (4 layers) in the quantizer environment:
8 windows of 512 tokens, a bound of 1,024 tokens. Counted: the parent modules' replays, the
tokens behind each mapping's activation statistics, and the order the windows come in. Python's
cycle collector is off in that process, so a layer's replay cache still alive after the layer
is done (a reference cycle: it waits for a collection that, in a process holding a large
model, rarely comes) is seen.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"
TINY = ROOT / ".quantgate" / "models" / "tiny"  # make tiny-model: a 4-layer Llama
SCRIPT = """\
import gc, json, os, sys, torch, weakref
gc.disable()
from llmcompressor.core import LifecycleCallbacks
from transformers import LlamaForCausalLM
from llmcompressor.modifiers.transform.awq.base import AWQModifier
from llmcompressor.pipelines.cache import IntermediatesCache
from serving.worker import awq, compressor

bound, seed = int(sys.argv[1]) or None, int(sys.argv[3])
replayed, stats, caches, held, order = [], {}, [], [], []
original_from = IntermediatesCache.from_dataloader.__func__

def from_dataloader(cls, dataloader, *args, **kwargs):
    cache = original_from(cls, dataloader, *args, **kwargs)
    for batch in cache.batch_intermediates:  # each row's first token names it
        order.extend(batch["input_ids"].value[:, 0].tolist())
    return cache
run_samples = original_setup = None
original_end = LifecycleCallbacks.__dict__["sequential_epoch_end"]

def setup(self):
    original_setup(self)
    caches.extend(weakref.ref(cache) for cache in self._parent_args_cache.values())

def epoch_end(cls, /, modules, **kwargs):
    result = original_end.__func__(cls, modules, **kwargs)
    held.append(sum(1 for ref in caches if ref() is not None and len(ref()) > 0))
    return result

def count_replays(self, module):
    outputs = run_samples(self, module)
    replayed.append(sum(o.shape[0] * o.shape[1] for o in outputs))
    return outputs

original_apply = AWQModifier._apply_smoothing

def apply(self, model):
    for name, (_, count) in self._smooth_activation_stats.items():
        stats[name] = int(count)
    return original_apply(self, model)

model = LlamaForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32)
recipe = {"method": "awq", "bits": 4, "activation_bits": 16, "group_size": 32,
          "symmetric": False, "ignore": ["lm_head"]}
os.environ[awq.LOSS_TOKENS_ENV] = str(bound or 0)
steps = compressor.modifiers(recipe, offload_cache=False)
run_samples = AWQModifier._run_samples
AWQModifier._run_samples = count_replays
AWQModifier._apply_smoothing = apply
original_setup = AWQModifier._setup_activation_cache_hooks  # with the bound, if any
AWQModifier._setup_activation_cache_hooks = setup
LifecycleCallbacks.sequential_epoch_end = classmethod(epoch_end)
IntermediatesCache.from_dataloader = classmethod(from_dataloader)
rows = [[(i * 7 + j) % 1000 for j in range(512)] for i in range(8)]
compressor._oneshot(model, steps, rows, offload=False, max_batch=2, seed=seed)
print(json.dumps({"replayed": replayed, "stats": stats, "held": held, "order": order}))
"""


@functools.cache
def run(bound: int, seed: int = 0) -> dict[str, list[int] | dict[str, int]]:
    cmd = [str(QUANT_PYTHON), "-c", SCRIPT, str(bound), str(TINY), str(seed)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, list[int] | dict[str, int]] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_the_grid_replays_only_the_bounded_tokens_and_statistics_see_all() -> None:
    found = run(1024)
    replayed, stats = found["replayed"], found["stats"]
    assert isinstance(replayed, list) and isinstance(stats, dict)
    # per mapping (3 or 4 a layer): the unquantized output, then a replay per grid point (20)
    assert len(stats) >= 4 * 3 and len(replayed) == 21 * len(stats)
    assert set(replayed) == {1024}  # batches of 2 x 512 tokens: the first one only
    assert set(stats.values()) == {8 * 512}
    # no layer's replay cache outlives its layer: every one was freed as soon as AWQ let it go
    assert found["held"] == [0] * len(found["held"]) and len(found["held"]) >= 4


def test_with_no_bound_the_grid_replays_every_token() -> None:
    found = run(0)
    replayed = found["replayed"]
    assert isinstance(replayed, list) and set(replayed) == {8 * 512}
    assert found["held"] == [0] * len(found["held"]) and len(found["held"]) >= 4


def test_the_calibration_order_follows_the_recipes_seed() -> None:
    """llm-compressor shuffles the windows; the bounded grid sees only the first batches, so an
    unseeded shuffle gave one recipe a different variant on every build."""
    first = run(1024)["order"]
    assert sorted(first) == [i * 7 for i in range(8)]  # every window, once
    assert run(0)["order"] == first  # another process, the same seed: the same order
    assert run(1024, seed=1)["order"] != first
