"""Render the configuration reference (``hasupd.config.reference``) as man pages and JSON Schemas.

Pure functions from the table to text; ``hasupd.cli.gendocs`` writes the files. The output depends
on nothing but the table and the example files, so the committed files can be compared byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hasupd.config.nodes import NAME_PATTERN
from hasupd.config.reference import FILES, ConfigFile
from hasupd.config.reference_types import UNSET, Key, Shape

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# The example file each man page shows, relative to the source tree.
EXAMPLES = {
    "daemon": "etc/hasupd/hasupd.yaml",
    "service": "etc/hasupd/services.d/web.yaml.example",
    "backup": "etc/hasupd/backups.d/app-data.yaml.example",
}
SCHEMA_NAMES = {
    "daemon": "hasupd.schema.json",
    "service": "hasupd-service.schema.json",
    "backup": "hasupd-backup.schema.json",
}


def _object() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": {}}


def _key_schema(key: Key, mappings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the schema of ``key``'s value; register the mapping it opens (if any) in ``mappings``."""
    shape = key.type.shape
    schema: dict[str, Any]
    if shape is Shape.VALUE:
        schema = dict(key.type.schema)
    elif shape is Shape.MAPPING:
        schema = mappings[key.path] = _object()
    elif shape is Shape.LIST_OF_MAPPINGS:
        item = mappings[f"{key.path}[]"] = _object()
        items = {"anyOf": [*key.type.alternatives, item]} if key.type.alternatives else item
        schema = {"type": "array", "items": items}
    else:
        item = mappings[f"{key.path}.NAME"] = _object()
        # "properties" takes reserved names documented beside the free ones (alerts.X beside alerts.NAME).
        schema = mappings[key.path] = {
            "type": "object",
            "propertyNames": {"pattern": f"^{NAME_PATTERN}$"},
            "properties": {},
            "additionalProperties": item,
        }
    schema["description"] = f"{key.type.text}. {key.meaning}"
    if key.default is not UNSET:
        schema["default"] = key.default
    return schema


def json_schema(config_file: ConfigFile) -> dict[str, Any]:
    """Return the JSON Schema of one kind of config file.

    Raise KeyError when a key comes before the mapping it is in (the table's order is wrong).
    """
    root = _object()
    root["$schema"] = SCHEMA_DIALECT
    root["title"] = f"hasupd: {config_file.files}"
    root["description"] = f"{config_file.summary}; see {config_file.page}(5)"
    mappings: dict[str, dict[str, Any]] = {"": root}
    for key in config_file.keys:
        parent = mappings[key.parent]
        parent["properties"][key.name] = _key_schema(key, mappings)
        if key.required:
            parent.setdefault("required", []).append(key.name)
    return root


def schema_text(config_file: ConfigFile) -> str:
    return json.dumps(json_schema(config_file), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- man pages


def roff_escape(text: str) -> str:
    """Return ``text`` safe as roff body text: backslashes, minus signs and leading dots escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n")]
    return "\n".join(lines)


def _key_entry(key: Key) -> list[str]:
    facts = [f"\\fI{roff_escape(key.type.text)}\\fR"]
    if key.required:
        facts.append("required")
    default = key.shown_default()
    if default is not None:
        facts.append(f"default \\fB{roff_escape(default)}\\fR")
    return [".TP", f".B {roff_escape(key.path)}", "; ".join(facts) + ".", ".br", roff_escape(key.meaning)]


_VALUES = (
    "Durations are written as systemd writes them: 250ms, 30s, 5m, 1h, 2d (a bare number is seconds). "
    "Sizes: 512K, 64M, 2G. Names of services, jobs, channels and repositories match "
    f"{NAME_PATTERN}. Unknown or duplicate keys are errors; every error is reported as "
    "FILE:LINE:COL: dotted.key: message by hasupd check-config."
)


def man_page(config_file: ConfigFile, example: str | None) -> str:
    """Return the roff source of ``config_file``'s man page (section 5), with ``example`` as EXAMPLE."""
    title = config_file.page.upper()
    lines = [
        '.\\" Generated from hasupd/config/reference.py by python3 -m hasupd.cli.gendocs; do not edit.',
        f'.TH {roff_escape(title)} 5 "" "hasupd" "hasupd configuration"',
        ".SH NAME",
        f"{roff_escape(config_file.page)} \\- {roff_escape(config_file.summary)}",
        ".SH SYNOPSIS",
        f".I {roff_escape(config_file.files)}",
        ".SH DESCRIPTION",
    ]
    for paragraph in config_file.description.split("\n\n"):
        lines += [roff_escape(paragraph), ".PP"]
    lines += [roff_escape(_VALUES), ".PP"]
    lines += [
        "Keys are written as dotted paths from the top of the file: NAME stands for a name you choose, "
        "[] for each item of a list.",
        ".SH KEYS",
    ]
    for key in config_file.keys:
        lines += _key_entry(key)
    if example is not None:
        lines += [".SH EXAMPLE", ".nf", ".ft CR", roff_escape(example.rstrip("\n")), ".ft R", ".fi"]
    others = [f"\\fB{roff_escape(f.page)}\\fR(5)" for f in FILES if f is not config_file]
    lines += [".SH SEE ALSO", ", ".join(["\\fBhasupd\\fR(8)", "\\fBhasupctl\\fR(8)", *others])]
    return "\n".join(lines) + "\n"


def rendered(source_tree: Path) -> dict[str, str]:
    """Return {path relative to ``source_tree``: text} of every file generated from the reference."""
    files: dict[str, str] = {}
    for config_file in FILES:
        example_path = source_tree / EXAMPLES[config_file.kind]
        example = example_path.read_text(encoding="utf-8") if example_path.exists() else None
        files[f"packaging/man/man5/{config_file.page}.5"] = man_page(config_file, example)
        files[f"share/schema/{SCHEMA_NAMES[config_file.kind]}"] = schema_text(config_file)
    return files
