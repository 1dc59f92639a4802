"""Copy the manifest's JSON Schema (``quantgate schema``) into the chart's values.schema.json.

    python helm/tools/manifest_schema.py           rewrite the manifest part
    python helm/tools/manifest_schema.py --check   exit 1 if it is out of date

So ``helm install`` rejects a bad manifest (an unknown key, ``bits: 5``) before any pod starts.
The pydantic schema's ``$defs`` become ``definitions`` named ``manifest.<Name>`` (draft-07, as
Helm's validator expects); everything else in values.schema.json is written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from serving.manifest import Manifest

SCHEMA = Path(__file__).resolve().parents[1] / "quantgate" / "values.schema.json"
PREFIX = "manifest"


def _retarget(node: Any) -> Any:
    """Point every ``#/$defs/X`` reference at ``#/definitions/manifest.X``."""
    if isinstance(node, dict):
        return {
            key: (
                value.replace("#/$defs/", f"#/definitions/{PREFIX}.")
                if key == "$ref"
                else _retarget(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_retarget(item) for item in node]
    return node


def manifest_definitions() -> dict[str, Any]:
    schema = _retarget(Manifest.model_json_schema())
    defs = {f"{PREFIX}.{name}": body for name, body in schema.pop("$defs").items()}
    return {PREFIX: schema, **defs}


def updated(values_schema: dict[str, Any]) -> dict[str, Any]:
    kept = {
        name: body
        for name, body in values_schema["definitions"].items()
        if name != PREFIX and not name.startswith(PREFIX + ".")
    }
    return {**values_schema, "definitions": {**kept, **manifest_definitions()}}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str]) -> int:
    current = SCHEMA.read_text(encoding="utf-8")
    wanted = render(updated(json.loads(current)))
    if "--check" in argv:
        if current != wanted:
            print(f"{SCHEMA}: the manifest schema is out of date; run {' '.join(sys.argv[:1])}")
            return 1
        return 0
    SCHEMA.write_text(wanted, encoding="utf-8")
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
