"""``quantgate recommend``'s input: bad sizes and files exit 2 with one line naming the flag;
``quantgate bench --json`` output is read as measured rows. (The decision itself:
tests/test_more_methods.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

SIZES = ["--model-size", "8B", "--gpu-memory", "24GiB"]


def recommend(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["recommend", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-size", "0B", "--gpu-memory", "24GiB"], "--model-size: '0B' is not above zero"),
        (["--model-size", "8B", "--gpu-memory", "0"], "--gpu-memory: '0' is not above zero"),
        (["--model-size", "8 furlongs", "--gpu-memory", "24"], "--model-size: unknown unit"),
    ],
)
def test_sizes_must_be_above_zero(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = recommend(capsys, *args)
    assert code == 2 and err.startswith(f"quantgate recommend: {message}")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"rows": []}', "Input should be a valid array"),
        ("[1, 2]", "row 0: Input should be an object"),
        ('[{"method": "gptq"}]', "row 0: scheme: Field required"),
        ('[{"method": "gptq", "scheme": "W4A16", "tokens_per_s_n": "fast"}]', "tokens_per_s_n"),
        ("not json", "Invalid JSON"),
    ],
)
def test_measured_rows_must_be_bench_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "bench.json"
    path.write_text(content)
    code, _, err = recommend(capsys, *SIZES, "--measured", str(path))
    assert code == 2 and err.startswith(f"quantgate recommend: --measured {path}: not ")
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_json_output_is_read_as_measured_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [  # as `quantgate bench --json` writes them: every field, the unread ones too
        {"model": "m", "variant": "base", "method": "none", "scheme": "W16A16",
         "tokens_per_s_n": 900.0, "ppl_increase": 0.0, "note": "", "failed": False},
        {"model": "m", "variant": "w4", "method": "gptq", "scheme": "W4A16",
         "tokens_per_s_n": 1800.0, "ppl_increase": 0.03, "note": "", "failed": False},
    ]  # fmt: skip
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(rows))
    code, out, _ = recommend(capsys, *SIZES, "--priority", "speed", "--measured", str(path))
    assert code == 0 and "measured 1800 tok/s" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1]", "not a model's config.json (a JSON object)"),
        ('{"num_hidden_layers": 2, "hidden_size": 8}', "no 'num_attention_heads' in it"),
        ('{"num_hidden_layers": 2, "num_attention_heads": 0, "hidden_size": 8}', "above 0"),
        ("{", "not JSON"),
    ],
)
def test_a_model_config_that_cannot_be_read_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    code, _, err = recommend(capsys, *SIZES, "--model-config", str(path))
    assert code == 2 and err.startswith(f"quantgate recommend: --model-config {path}: ")
    assert message in err and len(err.strip().splitlines()) == 1
