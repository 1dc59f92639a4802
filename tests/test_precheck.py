"""Bad build input is refused from the disk alone, before any work starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.errors import InvalidRecipe
from serving.manifest import Variant
from serving.precheck import check_build, layer_inputs


def _variant(**fields: object) -> Variant:
    return Variant.model_validate(fields)


def test_layer_inputs_of_a_llama_config(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert layer_inputs(config) == {
        "q_proj": 256, "k_proj": 256, "v_proj": 256, "o_proj": 256,
        "gate_proj": 256, "up_proj": 256, "down_proj": 768,
    }  # fmt: skip
    assert layer_inputs({"model_type": "mystery"}) == {}


def test_group_size_that_does_not_divide_a_layer(model_dir: Path) -> None:
    with pytest.raises(InvalidRecipe, match=r"group_size 512 does not divide .* q_proj \(256\)"):
        check_build(model_dir, _variant(method="gptq", group_size=512))
    with pytest.raises(InvalidRecipe, match=r"up_proj \(256\); pick a divisor"):
        check_build(model_dir, _variant(method="rtn", group_size=192))  # divides 768 only
    only_down = ["lm_head", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
    check_build(model_dir, _variant(method="rtn", group_size=192, ignore=only_down))
    check_build(model_dir, _variant(method="gptq", group_size=-1))
    check_build(model_dir, _variant(method="gptq", group_size=64))


def test_gguf_k_types_need_rows_of_whole_256_blocks(model_dir: Path, tmp_path: Path) -> None:
    check_build(model_dir, _variant(method="gguf", gguf_type="q4_k_m"))  # 256 and 768
    config = json.loads((model_dir / "config.json").read_text())
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({**config, "intermediate_size": 800}))
    with pytest.raises(InvalidRecipe, match=r"blocks of 256 .* down_proj; .* use q8_0 or q4_0"):
        check_build(odd, _variant(method="gguf"))
    check_build(odd, _variant(method="gguf", gguf_type="q8_0"))  # 800 = 25 blocks of 32
    check_build(odd, _variant(method="bitsandbytes", bits=8))  # LLM.int8: rows of any length
    with pytest.raises(InvalidRecipe, match=r"group_size 256 does not divide .* down_proj \(800\)"):
        check_build(odd, _variant(method="torchao", group_size=256))


def test_source_must_be_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidRecipe, match="is not a model folder"):
        check_build(tmp_path / "nope", _variant(method="rtn"))


def _calibrated(dataset: Path, **calibration: object) -> Variant:
    return _variant(method="gptq", calibration={"dataset": dataset, **calibration})


def test_missing_and_empty_datasets(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRecipe, match=r"calibration dataset .*absent.txt does not exist"):
        check_build(model_dir, _calibrated(tmp_path / "absent.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InvalidRecipe, match="holds no text"):
        check_build(model_dir, _calibrated(empty))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.md").write_text("markdown is not read")
    with pytest.raises(InvalidRecipe, match="holds no text"):
        check_build(model_dir, _calibrated(folder))
    (folder / "a.txt").write_text("some text\n")
    check_build(model_dir, _calibrated(folder))


def test_jsonl_rows_need_the_text_field(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"body": "hello"}\n')
    with pytest.raises(InvalidRecipe, match=r"data.jsonl:1: no string field 'text'"):
        check_build(model_dir, _calibrated(data))
    check_build(model_dir, _calibrated(data, text_field="body"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(InvalidRecipe, match=r"use a \.txt or \.jsonl file"):
        check_build(model_dir, _calibrated(tmp_path / "data.csv"))


def test_saved_dataset_split_must_exist(model_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    check_build(model_dir, _calibrated(saved, split="test"))
    with pytest.raises(InvalidRecipe, match=r"has no split 'validation' \(train, test\)"):
        check_build(model_dir, _calibrated(saved, split="validation"))


def test_data_free_and_unbuilt_methods_need_no_dataset(model_dir: Path, tmp_path: Path) -> None:
    check_build(model_dir, _variant(method="rtn"))
    check_build(tmp_path / "no-model-needed", _variant(method="fp8"))
