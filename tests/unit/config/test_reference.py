"""The configuration reference (hasupd/config/reference.py) against the validators that read config.

The validators are the truth about which keys exist: every mapping they read goes through
``read_mapping``, which (with ``Ctx.keys_seen``) tells which keys each mapping accepts. A skeleton
document with every documented mapping present makes them reveal every key, including keys nobody
documented yet. The man pages and JSON Schemas generated from the reference are then checked against
the same set, against the shipped example files, and against the committed copies.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from hasupd.cli.gendocs import REGENERATE, SOURCE_TREE, stale
from hasupd.config.docgen import SCHEMA_NAMES, json_schema
from hasupd.config.issues import ConfigIssue
from hasupd.config.model import BackupJobConfig, DaemonConfig, ServiceConfig
from hasupd.config.nodes import Ctx, Document, to_int
from hasupd.config.reference import FILES, ConfigFile
from hasupd.config.reference_types import UNSET, Key, Shape
from hasupd.config.validate_backups import validate_backup
from hasupd.config.validate_daemon import validate_daemon
from hasupd.config.validate_services import SERVICE_FIELDS, validate_service

BY_KIND = {f.kind: f for f in FILES}
TABLES = {"daemon": "DAEMON_KEYS", "service": "SERVICE_KEYS", "backup": "BACKUP_KEYS"}
PLACEHOLDER = "x-name"  # a valid name standing for NAME
# The smallest valid file of each kind, to which a test adds the keys it looks at.
MINIMAL: dict[str, dict[str, Any]] = {
    "daemon": {},
    "service": {"command": ["/bin/true"]},
    "backup": {"repository": "hot", "paths": ["/srv"]},
}


def segments(path: str) -> list[str]:
    """Split a reference path into mapping keys, "NAME" and "[]": "health[].tcp" -> health, [], tcp."""
    out: list[str] = []
    for part in path.split("."):
        if part.endswith("[]"):
            out += [part[:-2], "[]"]
        else:
            out.append(part)
    return out


def reference_path(validator_path: str) -> str:
    """Return the reference form of a path the validators report: "alerts.x-name" -> "alerts.NAME",
    "health.0" -> "health[]"."""
    out = ""
    for part in validator_path.split(".") if validator_path else []:
        if part.isdigit():
            out += "[]"
        else:
            name = "NAME" if part == PLACEHOLDER else part
            out = f"{out}.{name}" if out else name
    return out


def validate(
    kind: str, data: dict[str, Any], keys_seen: dict[str, set[str]] | None = None
) -> tuple[Any, list[ConfigIssue]]:
    """Validate ``data`` as a file of ``kind``; return the model value and the issues."""
    issues: list[ConfigIssue] = []
    ctx = Ctx(f"{kind}.yaml", issues)
    ctx.keys_seen = keys_seen
    doc = Document(f"{kind}.yaml", "x", yaml.compose(yaml.safe_dump(data)))
    if kind == "daemon":
        value: Any = validate_daemon(ctx, doc)[0]
    elif kind == "service":
        value = validate_service(ctx, doc)
    else:
        value = validate_backup(ctx, doc, frozenset(), frozenset({"hot", "cold"}))
    return value, issues


def skeleton(config_file: ConfigFile) -> dict[str, Any]:
    """Return a document with an empty mapping at every documented key (a value key too: a mapping
    there that the validators read as one proves the key is a mapping, not a value)."""
    root: dict[str, Any] = {}
    for key in config_file.keys:
        node: Any = root
        parts = segments(key.path)
        for part in parts[:-1]:
            node = node[0] if part == "[]" else node[PLACEHOLDER if part == "NAME" else part]
        if key.type.shape is Shape.LIST_OF_MAPPINGS:
            node[parts[-1]] = [{}]
        elif key.type.shape is Shape.NAMED_MAPPINGS:
            node[parts[-1]] = {PLACEHOLDER: {}}
        else:
            node[parts[-1]] = {}
    return root


# Keys of which an item takes exactly one (by the item's reference path): the validators read the options
# of one only, so the skeleton is validated once with each of them alone too.
EXCLUSIVE = {
    "alerts.NAME": ("email", "apprise", "sendmail", "pagerduty"),
    "alerts.rules[]": ("new_error", "error_rate", "restart_rate", "quiet"),
}


def _item(doc: dict[str, Any], path: str) -> Any:
    """Return the node at reference ``path`` of a skeleton or example document (None if absent)."""
    node: Any = doc
    for part in segments(path):
        if part == "[]":
            node = node[0] if isinstance(node, list) and node else None
        else:
            node = node.get(PLACEHOLDER if part == "NAME" else part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def _variants(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Return ``doc`` and, for each EXCLUSIVE key it holds, a copy with that key alone in its item."""
    out = [doc]
    for path, members in EXCLUSIVE.items():
        for member in members:
            variant = copy.deepcopy(doc)
            item = _item(variant, path)
            if isinstance(item, dict) and member in item:
                for other in members:
                    if other != member:
                        item.pop(other, None)
                out.append(variant)
    return out


def accepted_keys(kind: str) -> dict[str, str]:
    """Return {reference path: kind of value} of every key the validators accept in a file of ``kind``
    ("mapping" for the keys whose value they read as a mapping, else "value")."""
    seen: dict[str, set[str]] = {}
    for doc in _variants(skeleton(BY_KIND[kind])):
        validate(kind, doc, seen)
    mappings = {reference_path(path) for path in seen}
    keys = {}
    for path, fields in seen.items():
        for field in fields:
            full = f"{reference_path(path)}.{field}" if path else field
            keys[full] = (
                "mapping" if any(m in (full, f"{full}[]", f"{full}.NAME") for m in mappings) else "value"
            )
    return keys


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_every_key_the_validators_accept_is_documented(kind: str) -> None:
    """A key the validators accept with no entry in the reference fails here, naming key and place."""
    documented = {key.path for key in BY_KIND[kind].keys}
    missing = sorted(set(accepted_keys(kind)) - documented)
    where = f"{BY_KIND[kind].files}: add a Key to {TABLES[kind]} in hasupd/config/reference.py"
    assert not missing, "\n".join(
        f"config key {path!r} has no entry ({where}), then run {REGENERATE}" for path in missing
    )


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_every_documented_key_is_accepted_with_its_shape(kind: str) -> None:
    accepted = accepted_keys(kind)
    stale_keys = sorted({key.path for key in BY_KIND[kind].keys} - set(accepted))
    assert not stale_keys, f"documented in {TABLES[kind]} but not accepted by the validators: {stale_keys}"
    for key in BY_KIND[kind].keys:
        is_mapping = key.type.shape is not Shape.VALUE
        assert (accepted[key.path] == "mapping") == is_mapping, (
            f"{key.path}: the validators read it as a {accepted[key.path]}, the reference says "
            f"{key.type.shape.value} ({TABLES[kind]} in hasupd/config/reference.py)"
        )


def test_the_table_puts_every_key_after_the_mapping_it_is_in() -> None:
    for config_file in FILES:
        known = {""}
        for key in config_file.keys:
            assert key.parent in known, f"{key.path}: its mapping {key.parent!r} is not documented before it"
            known.add(key.path)
            if key.type.shape is Shape.LIST_OF_MAPPINGS:
                known.add(f"{key.path}[]")
            elif key.type.shape is Shape.NAMED_MAPPINGS:
                known.add(f"{key.path}.NAME")
        paths = [key.path for key in config_file.keys]
        assert len(paths) == len(set(paths)), f"a key is documented twice in {config_file.page}"


def _containers(config_file: ConfigFile) -> dict[str, Key]:
    return {key.path: key for key in config_file.keys if key.type.shape is not Shape.VALUE}


def with_key(config_file: ConfigFile, key: Key, value: Any) -> dict[str, Any]:
    """Return the minimal file with the mappings above ``key`` filled from their examples and ``key``
    set to ``value`` (left out when ``value`` is UNSET)."""
    doc = copy.deepcopy(MINIMAL[config_file.kind])
    if key.path.startswith("container"):
        del doc["command"]  # command and container exclude each other
    containers = _containers(config_file)
    node: Any = doc
    parts = segments(key.path)
    path = ""
    for part in parts[:-1]:
        if part in ("[]", "NAME"):
            node = node[0] if part == "[]" else node[PLACEHOLDER]
            path += "[]" if part == "[]" else ".NAME"
            continue
        path = f"{path}.{part}" if path else part
        container = containers[path]
        assert container.example is not UNSET, f"{path}: give it an example= in hasupd/config/reference.py"
        if part not in node:
            example = copy.deepcopy(container.example)
            shape = container.type.shape
            node[part] = (
                [example]
                if shape is Shape.LIST_OF_MAPPINGS
                else {PLACEHOLDER: example}
                if shape is Shape.NAMED_MAPPINGS
                else example
            )
        node = node[part]
    for path, members in EXCLUSIVE.items():  # the key's own alternative alone in its item
        item = _item(doc, path)
        chosen = key.path[len(path) + 1 :].split(".")[0] if key.path.startswith(path + ".") else None
        if isinstance(item, dict) and chosen in members:
            for other in members:
                if other != chosen and other != parts[-1]:
                    item.pop(other, None)
    node.pop(parts[-1], None)
    if value is not UNSET:
        node[parts[-1]] = copy.deepcopy(value)
    return doc


DEFAULTS = [(f.kind, key) for f in FILES for key in f.keys if key.default is not UNSET]


@pytest.mark.parametrize(("kind", "key"), DEFAULTS, ids=[f"{kind}:{key.path}" for kind, key in DEFAULTS])
def test_a_documented_default_means_the_same_as_leaving_the_key_out(kind: str, key: Key) -> None:
    config_file = BY_KIND[kind]
    left_out, issues = validate(kind, with_key(config_file, key, UNSET))
    assert not issues, issues
    given, issues = validate(kind, with_key(config_file, key, key.default))
    assert not issues, issues
    assert given == left_out, (
        f"{key.path}: default {key.default!r} in hasupd/config/reference.py is not the model's default"
    )
    # What the validators accept, the JSON Schema accepts too.
    doc = with_key(config_file, key, key.default)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(kind).iter_errors(doc)
    ]
    assert not errors, f"the schema rejects a valid file {doc}: {errors}"


def test_the_generated_files_are_up_to_date() -> None:
    outdated = stale()
    assert not outdated, f"out of date: {', '.join(outdated)}; regenerate them with: {REGENERATE}"


# --------------------------------------------------------------------------- JSON Schema

try:
    import jsonschema
except ImportError:  # the test that needs it fails with the reason
    jsonschema = None


def _validator(kind: str) -> Any:
    if jsonschema is None:
        pytest.fail("the jsonschema package is missing: pip install jsonschema (Debian: python3-jsonschema)")
    schema = json.loads((SOURCE_TREE / "share" / "schema" / SCHEMA_NAMES[kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _schema_has(schema: dict[str, Any], path: str) -> bool:
    node = schema
    for part in segments(path):
        if part == "[]":
            items = node["items"]
            node = next((alt for alt in items.get("anyOf", [items]) if "properties" in alt), items)
        elif part == "NAME":
            node = node["additionalProperties"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            return False
    return True


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_every_key_the_validators_accept_is_in_the_json_schema(kind: str) -> None:
    schema = json_schema(BY_KIND[kind])
    committed = json.loads((SOURCE_TREE / "share" / "schema" / SCHEMA_NAMES[kind]).read_text())
    assert committed == schema, f"share/schema/{SCHEMA_NAMES[kind]} is out of date: run {REGENERATE}"
    missing = [path for path in accepted_keys(kind) if not _schema_has(schema, path)]
    assert not missing, f"not in share/schema/{SCHEMA_NAMES[kind]}: {missing}"


def _examples() -> list[tuple[str, Path]]:
    found = [
        ("daemon", SOURCE_TREE / "etc/hasupd/hasupd.yaml"),
        ("daemon", SOURCE_TREE / "examples/demo/hasupd.yaml"),
    ]
    for folder in ("etc/hasupd", "examples/demo"):
        found += [("service", p) for p in sorted((SOURCE_TREE / folder / "services.d").glob("*.yaml*"))]
        found += [("backup", p) for p in sorted((SOURCE_TREE / folder / "backups.d").glob("*.yaml*"))]
    return found


@pytest.mark.parametrize(
    ("kind", "path"), _examples(), ids=[str(p.relative_to(SOURCE_TREE)) for _, p in _examples()]
)
def test_the_shipped_example_files_validate_against_the_schema(kind: str, path: Path) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(kind).iter_errors(data)
    ]
    assert not errors, f"{path}: {errors}"


def test_the_schema_rejects_an_unknown_key_and_a_wrong_type() -> None:
    validator = _validator("service")
    assert not list(validator.iter_errors({"command": "/bin/true", "restart_sec": "5s"}))
    assert [e.message for e in validator.iter_errors({"command": "/bin/true", "restrat": "always"})]
    assert [e.message for e in validator.iter_errors({"command": "/bin/true", "instances": "two"})]
    assert [e.message for e in validator.iter_errors({"command": "/bin/true", "health": [{"tpc": "x:1"}]})]


# --------------------------------------------------------------------------- man pages


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_the_man_page_renders_cleanly_and_lists_every_accepted_key(kind: str) -> None:
    page = SOURCE_TREE / "packaging" / "man" / "man5" / f"{BY_KIND[kind].page}.5"
    proc = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "0", "PAGER": "cat"},
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    text = re.sub(r".\x08", "", proc.stdout)
    listed = {line.strip() for line in text.splitlines()}
    missing = [
        path
        for path in accepted_keys(kind)
        if path not in listed and not any(line.startswith(f"{path} ") for line in listed)
    ]
    assert not missing, f"{page.name} lacks {missing}: run {REGENERATE}"


# --------------------------------------------------------------------------- the model's side

# Model fields whose YAML key has another name, by (class, field).
RENAMED = {
    ("DaemonConfig", "repositories"): "backups.repositories",
    ("EmailChannel", "from_addr"): "from",
    ("CheckSpec", "read_data_subset_n"): "read_data_subset",
    ("BackupJobConfig", "max_age_sec"): "max_age",
    ("IoNice", "klass"): "class",
    ("SendmailChannel", "from_addr"): "from",
    ("DaemonConfig", "rules"): "alerts.rules",
}
# Model fields that are written as one of several keys (the key says which kind it is).
WRITTEN_AS = {
    ("HealthProbe", "kind"): ("http", "tcp", "exec"),
    ("HealthProbe", "target"): ("http", "tcp"),
    ("HealthProbe", "argv"): ("exec",),
    ("RecoveryAction", "kind"): ("exec", "restore"),
    ("RecoveryAction", "argv"): ("exec",),
    ("RecoveryAction", "job"): ("restore",),
    ("DatabaseSpec", "kind"): ("postgresql", "mysql", "sqlite"),
    ("DatabaseSpec", "database"): ("postgresql", "mysql", "sqlite"),
    ("AlertRule", "kind"): ("new_error", "error_rate", "restart_rate", "quiet"),
    ("AlertRule", "group"): ("new_error.group", "error_rate.group"),
    ("AlertRule", "window_sec"): (
        "new_error.window_sec",
        "error_rate.window_sec",
        "restart_rate.window_sec",
        "quiet.after_sec",
    ),
    **{
        ("AlertRule", name): ("error_rate." + name, "restart_rate." + name)
        for name in ("above", "factor", "baseline", "days")
    },
}
# Model fields no key sets: the name (of the file, or the NAME above a channel or repository), the
# source file, and what hasupd sets for its own units.
NOT_IN_FILES = {
    *((cls, field) for cls in ("ServiceConfig", "BackupJobConfig") for field in ("name", "source")),
    ("AlertChannel", "name"),
    ("RepositoryConfig", "name"),
    ("ServiceConfig", "restart_prevent_exit_status"),
    ("RLimit", "soft"),  # both written in one value: "SOFT:HARD"
    ("RLimit", "hard"),
}


def _dataclass_in(hint: Any) -> type | None:
    """Return the dataclass in a field's type (``X``, ``X | None``, ``tuple[X, ...]``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def model_keys(cls: type, prefix: str, documented: dict[str, Key]) -> list[tuple[str, str]]:
    """Return [(model field as Class.field, the key path it must be documented as)] below ``cls``."""
    out: list[tuple[str, str]] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = (cls.__name__, field.name)
        if name in NOT_IN_FILES:
            continue
        keys = WRITTEN_AS.get(name, (RENAMED.get(name, field.name),))
        for key in keys:
            path = f"{prefix}.{key}" if prefix else key
            out.append((f"{cls.__name__}.{field.name}", path))
            inner = _dataclass_in(hints[field.name])
            if inner is not None and path in documented and name not in WRITTEN_AS:
                shape = documented[path].type.shape
                below = {Shape.LIST_OF_MAPPINGS: f"{path}[]", Shape.NAMED_MAPPINGS: f"{path}.NAME"}
                out += model_keys(inner, below.get(shape, path), documented)
    return out


@pytest.mark.parametrize(
    ("kind", "cls"), [("daemon", DaemonConfig), ("service", ServiceConfig), ("backup", BackupJobConfig)]
)
def test_every_field_of_the_config_model_is_a_documented_key(kind: str, cls: type) -> None:
    """A model field with no key in the reference (and none in the man page and schema generated from
    it) fails here, unless it is listed above as set by no file."""
    documented = {key.path: key for key in BY_KIND[kind].keys}
    missing = [(field, path) for field, path in model_keys(cls, "", documented) if path not in documented]
    assert not missing, (
        f"model fields without a documented key: {missing}; add a Key to {TABLES[kind]} in "
        f"hasupd/config/reference.py and run {REGENERATE} (or list the field in NOT_IN_FILES here "
        "when no config file sets it)"
    )


def test_a_key_added_to_a_validator_is_reported_until_it_is_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the first test of this file does when someone adds a key and forgets its entry."""
    monkeypatch.setitem(SERVICE_FIELDS, "made_up", to_int(minimum=-20, maximum=19))
    assert "made_up" in accepted_keys("service")
    with pytest.raises(AssertionError, match=r"config key 'made_up' has no entry .*SERVICE_KEYS"):
        test_every_key_the_validators_accept_is_documented("service")
