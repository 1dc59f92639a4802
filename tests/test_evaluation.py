"""A manifest's own evaluation texts: validated with file:line, hashed into every measured
variant's recipe (new texts, a new measure), passed to the worker, kept apart in the base
perplexity cache, and measured by the real worker as domains of their own (slow part)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import manifest_errors
from serving.build import BuildSpec
from serving.evaluation import measure_key
from serving.manifest import Manifest, parse_manifest
from serving.quality import PerplexityCache

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / ".quantgate" / "models" / "tiny"
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"

MANIFEST = """\
version: 1
cache_dir: /tmp/cache
models:
  tiny:
    source: /models/tiny
    default_variant: base
    evaluation:
      texts:
        - {name: support, path: support.jsonl}
        - {name: legal, path: legal.txt, max_tokens: 512}
    variants:
      base: {method: none}
      rtn: {method: rtn, bits: 4}
"""


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": "My order is late."},
                      {"role": "assistant", "content": "Sorry: it ships tomorrow."}]},
        {"text": "Refunds take five working days."},
    ]  # fmt: skip
    (tmp_path / "support.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "legal.txt").write_text("The licensee shall not sublicense.\n\nTerm: one year.\n")
    return tmp_path


def parse(folder: Path, text: str = MANIFEST) -> Manifest:
    return parse_manifest(text, folder / "m.yaml")


def test_texts_are_resolved_and_hashed_into_measured_recipes(texts: Path) -> None:
    tiny = parse(texts).models["tiny"]
    assert tiny.evaluation is not None
    assert [t.path for t in tiny.evaluation.texts] == [texts / "support.jsonl", texts / "legal.txt"]
    recipe = tiny.variants["rtn"].recipe()
    names = [(t["name"], t["max_tokens"]) for t in recipe["evaluation"]["texts"]]
    assert names == [("support", None), ("legal", 512)]
    assert recipe["evaluation"]["builtin"] is True
    assert "evaluation" not in tiny.variants["base"].recipe()  # nothing is built or measured


def test_new_text_is_a_new_recipe_and_none_keeps_the_old_hash(texts: Path) -> None:
    before = parse(texts).models["tiny"].variants["rtn"].recipe_hash()
    (texts / "legal.txt").write_text("Term: two years.\n")
    assert parse(texts).models["tiny"].variants["rtn"].recipe_hash() != before
    plain = MANIFEST.split("    evaluation:")[0] + MANIFEST.split("max_tokens: 512}\n")[1]
    without = parse(texts, plain).models["tiny"].variants["rtn"]
    assert "evaluation" not in without.recipe()


def test_the_worker_is_told_the_texts(texts: Path) -> None:
    recipe = parse(texts).models["tiny"].variants["rtn"].recipe()
    spec = BuildSpec(texts, recipe, "h", texts / "s", texts / "f", texts / "log", texts / "job",
                     evaluation=recipe["evaluation"])  # fmt: skip
    told: dict[str, Any] = spec.worker_spec()["evaluate"]
    assert told["texts"]["texts"][0]["path"] == str(texts / "support.jsonl")


def test_the_base_is_kept_apart_per_set_of_texts(texts: Path, tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    spec = parse(texts).models["tiny"].variants["rtn"].recipe()["evaluation"]
    cache = PerplexityCache(tmp_path / "ppl", "256|128|texts/1")
    cache.put(source, {"perplexity": 20.0})
    assert cache.get(source, measure_key(spec)) is None  # measured again, with the new texts
    cache.put(source, {"perplexity": 21.0}, measure_key(spec))
    assert cache.get(source, measure_key(spec)) == {"perplexity": 21.0, "source": str(source)}
    assert measure_key(None) == ""


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        ("path: legal.txt", 10, "no evaluation text at"),
        ("path: legal.pdf", 10, "evaluation text is a .txt or .jsonl file"),
        ("name: legal", 7, "'prose' is a built-in domain"),
        ("name: support", 7, "'support' is named twice"),
    ],
)
def test_mistakes_are_errors_with_their_line(
    texts: Path, change: str, line: int, message: str
) -> None:
    bad = {
        "path: legal.txt": MANIFEST.replace("legal.txt", "missing.txt"),
        "path: legal.pdf": MANIFEST.replace("legal.txt", "legal.pdf"),
        "name: legal": MANIFEST.replace("name: legal", "name: prose"),
        "name: support": MANIFEST.replace("name: legal", "name: support"),
    }[change]
    (texts / "legal.pdf").write_text("x")
    errors = manifest_errors(bad, texts / "m.yaml")
    assert len(errors) == 1 and errors[0].startswith(f"{texts / 'm.yaml'}:{line}:"), errors
    assert message in errors[0]


@pytest.mark.slow
def test_the_worker_measures_each_text_as_a_domain(texts: Path) -> None:
    if not (TINY / "config.json").is_file():
        pytest.fail(f"no model at {TINY}: run `make tiny-model` first (make test does)")
    spec = parse(texts).models["tiny"].variants["rtn"].recipe()["evaluation"]
    only_mine = json.dumps({**spec, "builtin": False})
    run = subprocess.run(
        [str(QUANT_PYTHON), "-m", "serving.worker.perplexity", str(TINY), "--texts", only_mine],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("QUANTGATE_RESULT "))
    found = json.loads(line.removeprefix("QUANTGATE_RESULT "))
    assert list(found["domains"]) == ["support", "legal"]
    assert found["text"] == "held-out: support, legal"
    for measured in found["domains"].values():
        assert measured["tokens"] > 5 and 1 < measured["perplexity"] < 1e6
    assert found["tokens"] == sum(m["tokens"] for m in found["domains"].values())
