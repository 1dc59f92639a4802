"""Reading a manifest file: YAML with line numbers, duplicate keys refused, errors per field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)
from yaml.reader import ReaderError

from serving.errors import ManifestError, ManifestIssue
from serving.manifest.document import Manifest


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; raise ManifestError naming file, line and field."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(
            [ManifestIssue(str(path), None, None, exc.strerror or str(exc))]
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        why = f"not UTF-8: byte 0x{raw[exc.start]:02x} ({exc.reason}); save the file as UTF-8"
        raise ManifestError([ManifestIssue(str(path), line, None, why)]) from exc
    return parse_manifest(text, path)


def parse_manifest(text: str, path: Path) -> Manifest:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError([_yaml_issue(path, text, exc)]) from exc
    if not isinstance(data, dict):
        raise ManifestError([ManifestIssue(str(path), 1, None, "the manifest must be a mapping")])
    lines = _line_index(node) if node is not None else {}
    duplicates = _duplicate_keys(node) if node is not None else []
    if duplicates:  # YAML keeps the last silently: a variant written twice would vanish
        raise ManifestError(
            [ManifestIssue(str(path), line, ".".join(keys), msg) for keys, line, msg in duplicates]
        )
    try:
        return Manifest.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        issues = [
            _issue(path, lines, err["loc"], err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
        raise ManifestError(issues) from exc


def _yaml_issue(path: Path, text: str, exc: yaml.YAMLError) -> ManifestIssue:
    """Where YAML gave up, and why: its mark when it has one, else the character's position."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        return ManifestIssue(str(path), line, None, str(exc.problem or exc))
    if isinstance(exc, ReaderError):  # a control character; its position counts characters
        line = text.count("\n", 0, exc.position) + 1
        why = f"character 0x{exc.character:02x} is not allowed in YAML ({exc.reason})"
        return ManifestIssue(str(path), line, None, why)
    return ManifestIssue(str(path), None, None, str(exc))


def _issue(
    path: Path, lines: dict[tuple[str, ...], int], loc: tuple[Any, ...], msg: str
) -> ManifestIssue:
    keys = tuple(str(part) for part in loc)
    for n in range(len(keys), -1, -1):
        if keys[:n] in lines:
            return ManifestIssue(str(path), lines[keys[:n]], ".".join(keys) or None, msg)
    return ManifestIssue(str(path), None, ".".join(keys) or None, msg)


def _line_index(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path in the YAML document to the 1-based line where it is written."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            lines.update(_line_index(value, child))
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, str(i))))
    return lines


def _duplicate_keys(
    node: yaml.Node, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], int, str]]:
    """Every key written twice in one mapping: (its path, the line of the second, why)."""
    found: list[tuple[tuple[str, ...], int, str]] = []
    children: list[tuple[tuple[str, ...], yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in first:
                why = f"duplicate key {name!r} (first on line {first[name]}): the second would "
                found.append(((*path, name), line, why + "silently replace the first"))
            first.setdefault(name, line)
            children.append(((*path, name), value))
    elif isinstance(node, yaml.SequenceNode):
        children = [((*path, str(i)), item) for i, item in enumerate(node.value)]
    for child_path, child in children:
        found += _duplicate_keys(child, child_path)
    return found


def key_lines(path: Path) -> dict[tuple[str, ...], int]:
    """The line of each key path in a manifest file (for messages about what it names)."""
    node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    return _line_index(node) if node is not None else {}
