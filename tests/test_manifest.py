from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import manifest_errors
from serving.errors import ManifestError
from serving.manifest import Manifest, Method, Variant, load_manifest, parse_manifest
from serving.sources import SourceKind

DEMO = Path(__file__).parent.parent / "manifests" / "demo.yaml"


def test_demo_manifest_is_valid_and_paths_are_relative_to_it() -> None:
    manifest = load_manifest(DEMO)
    smol = manifest.models["smol"]
    gguf = DEMO.parent.parent / ".quantgate" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.source == str(gguf.resolve())
    assert smol.origin.kind is SourceKind.GGUF
    assert manifest.cache_dir == (DEMO.parent.parent / ".quantgate" / "cache").resolve()
    assert {"base", "gptq-w4a16", "awq-w4a16", "rtn-w4a16", "w8a8"} <= set(smol.variants)
    assert smol.variants["awq-w4a16"].method is Method.AWQ
    assert smol.variants[smol.default_variant].quantized


GOOD = """\
version: 1
cache_dir: /tmp/cache
models:
  tiny:
    source: /models/tiny
    default_variant: base
    variants:
      base: {method: none}
      gptq:
        method: gptq
        bits: 4
"""


def test_unknown_field_names_file_line_and_field() -> None:
    text = GOOD.replace("        bits: 4\n", "        bits: 4\n        bitz: 3\n")
    assert manifest_errors(text) == [
        "/m/bad.yaml:12: models.tiny.variants.gptq.bitz: Extra inputs are not permitted"
    ]


def test_bad_value_names_its_line() -> None:
    errors = manifest_errors(GOOD.replace("bits: 4", "bits: four"))
    assert errors[0].startswith("/m/bad.yaml:11: models.tiny.variants.gptq.bits:")


def test_default_variant_must_exist_and_the_error_is_on_its_line() -> None:
    assert manifest_errors(GOOD.replace("default_variant: base", "default_variant: nope")) == [
        "/m/bad.yaml:6: models.tiny.default_variant: 'nope' is not one of the model's variants "
        "(base, gptq)"
    ]


def test_an_alias_to_nothing_is_an_error_on_its_line() -> None:
    text = GOOD + "aliases:\n  fine: tiny:gptq\n  foo: tiny:nope\n  bar: nothing\n"
    assert manifest_errors(text) == [
        "/m/bad.yaml:14: aliases.foo: points at unknown 'tiny:nope'",
        "/m/bad.yaml:15: aliases.bar: points at unknown 'nothing'",
    ]


def test_yaml_syntax_error_names_line() -> None:
    errors = manifest_errors(
        GOOD.replace("      base: {method: none}", "      base: {method: none")
    )
    assert errors[0].startswith("/m/bad.yaml:9:") or errors[0].startswith("/m/bad.yaml:10:")


def test_missing_required_field() -> None:
    errors = manifest_errors(GOOD.replace("    source: /models/tiny\n", ""))
    assert errors == [
        "/m/bad.yaml:4: models.tiny: source is required: variants base, gptq are served locally"
    ]
    errors = manifest_errors(
        GOOD.replace("default_variant: base", "default_variant: base\n    sauce: 1")
    )
    assert errors == ["/m/bad.yaml:7: models.tiny.sauce: Extra inputs are not permitted"]


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert manifest_errors("- just\n- a list\n") == [
        "/m/bad.yaml:1: the manifest must be a mapping"
    ]
    with pytest.raises(ManifestError, match="No such file"):
        load_manifest(tmp_path / "absent.yaml")


def test_recipe_hash_changes_with_recipe_only() -> None:
    manifest = parse_manifest(GOOD, Path("/m/ok.yaml"))
    gptq = manifest.models["tiny"].variants["gptq"]
    same = gptq.model_copy()
    other = gptq.model_copy(update={"group_size": 64})
    assert gptq.recipe_hash() == same.recipe_hash() != other.recipe_hash()
    assert gptq.recipe()["symmetric"] is True  # GPTQ defaults to symmetric, AWQ to asymmetric


def test_method_none_takes_no_bits_and_w4a8_needs_gptq_or_rtn() -> None:
    assert (
        "method 'none' is the base weights: it takes no bits"
        in manifest_errors(GOOD.replace("{method: none}", "{method: none, bits: 4}"))[0]
    )
    text = GOOD.replace("method: gptq", "method: awq").replace(
        "bits: 4", "bits: 4\n        activation_bits: 8"
    )
    assert (
        "activation_bits 8 is W4A8 or W8A8: method 'gptq' or 'rtn' with bits 4 or 8"
        in manifest_errors(text)[0]
    )


def _variant(**fields: object) -> Variant:
    return Variant.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "int3"}, "Input should be 'none', 'gptq', 'awq', 'w8a8', 'fp8', 'rtn', "),
        ({"method": "awq", "bits": 8}, "method 'awq' supports bits 2, 3, 4, not 8"),
        ({"method": "w8a8", "bits": 4}, "method 'w8a8' supports bits 8, not 4"),
        ({"method": "gptq", "bits": 5}, "method 'gptq' supports bits 2, 3, 4, 8, not 5"),
        ({"method": "w8a8", "group_size": 128}, "int8 per-channel symmetric: drop group_size"),
        ({"method": "fp8", "group_size": 128}, "method 'fp8' is quantized by vLLM at load"),
        ({"method": "fp8", "bits": 4}, "it takes no bits"),
        ({"method": "rtn", "calibration": {"samples": 8}}, "'rtn' is data-free"),
        ({"method": "awq", "backend": "autogptq"}, "backend 'autogptq' has no method 'awq'"),
        ({"method": "gptq", "group_size": 8}, "group_size must be -1 (per channel) or at least"),
        ({"method": "gptq", "activation_bits": 8, "symmetric": False}, "needs symmetric"),
        ({"method": "gptq", "calibration": {"split": "heldout"}}, "its 'train' split only"),
        ({"method": "none", "max_ppl_increase": 0.05}, "it takes no max_ppl_increase"),
        ({"method": "rtn", "max_ppl_increase": "-5%"}, "max_ppl_increase must be a fraction"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        _variant(**fields)


def test_defaults_per_method_fill_the_recipe() -> None:
    assert _variant(method="gptq").recipe()["symmetric"] is True
    assert _variant(method="awq").recipe()["symmetric"] is False
    w8a8 = _variant(method="w8a8").recipe()
    assert (w8a8["bits"], w8a8["activation_bits"], w8a8["group_size"]) == (8, 8, -1)
    assert "calibration" in w8a8 and "calibration" not in _variant(method="rtn").recipe()
    assert _variant(method="gptq", bits=3).scheme == "W3A16"
    assert _variant(method="rtn", bits=4, activation_bits=8).scheme == "W4A8"
    rtn_w8a8 = _variant(method="rtn", bits=8, activation_bits=8)  # data-free int8 weights and
    assert rtn_w8a8.scheme == "W8A8" and rtn_w8a8.recipe()["group_size"] == -1  # activations
    with pytest.raises(ValidationError, match=r"W8A8 .* is per channel"):
        _variant(method="rtn", bits=8, activation_bits=8, group_size=64)


def test_fp8_is_not_built_and_is_quantized_by_vllm_at_load() -> None:
    fp8 = _variant(method="fp8")
    assert fp8.quantized and not fp8.needs_build
    assert fp8.serve_quantization == "fp8" and fp8.scheme == "FP8"
    assert fp8.recipe() == {"method": "fp8"}
    assert _variant(method="rtn").needs_build and _variant(method="rtn").serve_quantization is None


def test_budget_is_not_part_of_the_recipe_and_takes_percent() -> None:
    plain = _variant(method="rtn", bits=2)
    gated = _variant(method="rtn", bits=2, max_ppl_increase="5%")
    assert gated.max_ppl_increase == pytest.approx(0.05)
    assert plain.recipe_hash() == gated.recipe_hash()
    assert plain.recipe_hash() != _variant(method="rtn", bits=3).recipe_hash()
    assert _variant(method="rtn", max_ppl_increase="500%").max_ppl_increase == 5


def test_a_budget_above_1_is_a_slip_for_a_percentage() -> None:
    errors = manifest_errors(GOOD.replace("bits: 4", "bits: 4\n        max_ppl_increase: 5"))
    assert errors == [
        "/m/bad.yaml:12: models.tiny.variants.gptq.max_ppl_increase: "
        "max_ppl_increase 5 would mean +500%: write a fraction (0.05) or a percentage ('5%')"
    ]


def test_json_schema_exports() -> None:
    schema = Manifest.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "models" in schema["properties"]


def test_a_key_written_twice_is_an_error_on_the_second_line() -> None:
    text = GOOD.replace("      base: {method: none}\n", "      base: {method: none}\n" * 2)
    assert manifest_errors(text) == [
        "/m/bad.yaml:9: models.tiny.variants.base: duplicate key 'base' (first on line 8): "
        "the second would silently replace the first"
    ]


def test_a_built_variant_is_named_by_its_models_source_too() -> None:
    """Another source is another build: its folder (the recipe's hash) changes; the base,
    served from the source itself, has nothing to rebuild."""
    path = Path("/m/a.yaml")
    one = parse_manifest(GOOD, path).models["tiny"]
    two = parse_manifest(GOOD.replace("/models/tiny", "/models/tiny-v2"), path).models["tiny"]
    assert one.variants["gptq"].recipe()["source"] == "/models/tiny"
    assert one.variants["gptq"].recipe_hash() != two.variants["gptq"].recipe_hash()
    assert one.variants["base"].recipe() == two.variants["base"].recipe() == {"method": "none"}


def test_a_file_not_in_utf8_is_an_error_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("      gptq:\n", "      # café\n      gptq:\n").encode("latin-1"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert [str(issue) for issue in info.value.issues] == [
        f"{path}:9: not UTF-8: byte 0xe9 (invalid continuation byte); save the file as UTF-8"
    ]


def test_a_control_character_is_an_error_on_its_line() -> None:
    assert manifest_errors(GOOD.replace("gptq:\n", "gptq: # a\x01b\n")) == [
        "/m/bad.yaml:9: character 0x01 is not allowed in YAML (special characters are not allowed)"
    ]


@pytest.mark.parametrize("junk", [b"# caf\xe9\n", b"# a\x01b\n"], ids=["latin-1", "control"])
def test_check_refuses_an_unreadable_manifest_with_exit_2(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(junk + GOOD.encode())
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"quantgate: invalid manifest:\n  {path}:1: ")
    assert "Traceback" not in run.stderr
