from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ManifestError
from serving.manifest import Manifest, Method, load_manifest, parse_manifest

DEMO = Path(__file__).parent.parent / "manifests" / "demo.yaml"


def test_demo_manifest_is_valid_and_paths_are_relative_to_it() -> None:
    manifest = load_manifest(DEMO)
    tiny = manifest.models["tiny"]
    assert tiny.source == (DEMO.parent.parent / ".quantgate" / "models" / "tiny").resolve()
    assert manifest.cache_dir == (DEMO.parent.parent / ".quantgate" / "cache").resolve()
    assert {"base", "gptq-w4a16", "awq-w4a16", "gptq-w4a8"} <= set(tiny.variants)
    assert tiny.variants["awq-w4a16"].method is Method.AWQ
    assert tiny.variants[tiny.default_variant].quantized


def _errors(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, Path("/m/bad.yaml"))
    return [str(issue) for issue in info.value.issues]


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
    assert _errors(text) == [
        "/m/bad.yaml:12: models.tiny.variants.gptq.bitz: Extra inputs are not permitted"
    ]


def test_bad_value_names_its_line() -> None:
    errors = _errors(GOOD.replace("bits: 4", "bits: 3"))
    assert errors[0].startswith("/m/bad.yaml:11: models.tiny.variants.gptq.bits:")


def test_default_variant_must_exist() -> None:
    errors = _errors(GOOD.replace("default_variant: base", "default_variant: nope"))
    assert "/m/bad.yaml:4: models.tiny:" in errors[0]
    assert "default_variant 'nope' is not a variant (base, gptq)" in errors[0]


def test_yaml_syntax_error_names_line() -> None:
    errors = _errors(GOOD.replace("      base: {method: none}", "      base: {method: none"))
    assert errors[0].startswith("/m/bad.yaml:9:") or errors[0].startswith("/m/bad.yaml:10:")


def test_missing_required_field() -> None:
    errors = _errors(GOOD.replace("    source: /models/tiny\n", ""))
    assert errors == [
        "/m/bad.yaml:4: models.tiny: Value error, source is required: "
        "variants base, gptq are served locally"
    ]
    errors = _errors(GOOD.replace("default_variant: base", "default_variant: base\n    sauce: 1"))
    assert errors == ["/m/bad.yaml:7: models.tiny.sauce: Extra inputs are not permitted"]


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert _errors("- just\n- a list\n") == ["/m/bad.yaml:1: the manifest must be a mapping"]
    with pytest.raises(ManifestError, match="No such file"):
        load_manifest(tmp_path / "absent.yaml")


def test_recipe_hash_changes_with_recipe_only() -> None:
    manifest = parse_manifest(GOOD, Path("/m/ok.yaml"))
    gptq = manifest.models["tiny"].variants["gptq"]
    same = gptq.model_copy()
    other = gptq.model_copy(update={"group_size": 64})
    assert gptq.recipe_hash() == same.recipe_hash() != other.recipe_hash()
    assert gptq.recipe()["symmetric"] is True  # GPTQ defaults to symmetric, AWQ to asymmetric


def test_method_none_takes_no_bits_and_w4a8_needs_gptq() -> None:
    assert (
        "method 'none' takes no bits"
        in _errors(GOOD.replace("{method: none}", "{method: none, bits: 4}"))[0]
    )
    text = GOOD.replace("method: gptq", "method: awq").replace(
        "bits: 4", "bits: 4\n        activation_bits: 8"
    )
    assert "activation_bits 8 needs method 'gptq'" in _errors(text)[0]


def test_json_schema_exports() -> None:
    schema = Manifest.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "models" in schema["properties"]
