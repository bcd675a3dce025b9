"""Validate custom resources (KServe, Prometheus Operator) against their published CRD schemas, offline.

    python deploy/validate_custom_resources.py --crds tests/data/crds FILE.yaml...

kubernetes-validate knows Kubernetes' own kinds only. This reads each CustomResourceDefinition in --crds
(tests/data/crds/README.md names their sources and versions) and checks every object of a kind they define
against the openAPIV3Schema of its apiVersion, as the API server does under `kubectl apply
--validate=strict`: wrong types, missing required fields, values outside an enum or a pattern, and unknown
fields (which the API server would otherwise drop without a word) fail. Not checked: CEL rules
(x-kubernetes-validations), which need the API server. An object of a CRD's group whose kind or version
the CRDs do not define fails; objects of other groups are left to kubernetes-validate.

Prints one line per object validated; exits 1 on any error (each printed with file, object and field
path). Needs jsonschema and PyYAML: kubernetes-validate's own dependencies, so its interpreter runs this.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Schemas = dict[tuple[str, str, str], dict[str, Any]]  # (group, version, kind) -> schema
# libyaml's loader where PyYAML has it: the InferenceService CRD is 2 MB, 10 s for the pure-Python one.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as a JSON Schema (draft 4, which OpenAPI 3.0 follows) that refuses unknown
    fields: objects with `properties` close unless x-kubernetes-preserve-unknown-fields, int-or-string and
    nullable become the types they mean, and an embedded resource takes apiVersion, kind and metadata."""
    result = {key: value for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    for key in ("properties", "patternProperties"):
        if key in result:
            result[key] = {name: strict(sub) for name, sub in result[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(result.get(key), dict):
            result[key] = strict(result[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in result:
            result[key] = [strict(sub) for sub in result[key]]
    if schema.get("x-kubernetes-int-or-string"):
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}, *result.get("anyOf", [])]
    if schema.get("x-kubernetes-embedded-resource"):
        result.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
    if result.pop("nullable", False) and "type" in result:
        result["type"] = [result["type"], "null"]
    closed = "properties" in result and "additionalProperties" not in result
    if closed and not schema.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


def load_schemas(crd_dir: Path) -> Schemas:
    schemas: Schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    schemas[(spec["group"], version["name"], spec["names"]["kind"])] = strict(schema)
    return schemas


# Kubernetes' own rules for the object metadata that CRD schemas leave open (`metadata: {type: object}`).
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def objects(path: Path) -> Iterator[dict[str, Any]]:
    for document in yaml.load_all(path.read_text(), Loader=Loader):
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items", [])
        elif document:
            yield document


def validate(path: Path, schemas: Schemas) -> tuple[list[str], list[str]]:
    """(objects validated, errors) of one file."""
    groups = {group for group, _, _ in schemas}
    validated, errors = [], []
    for item in objects(path):
        group, _, version = str(item.get("apiVersion", "")).rpartition("/")
        kind, name = item.get("kind", "?"), (item.get("metadata") or {}).get("name", "?")
        where = f"{path}: {kind} {name}"
        if group not in groups:
            continue
        schema = schemas.get((group, version, kind))
        if schema is None:
            errors.append(f"{where}: {group}/{version} {kind} is not defined by the CRDs given")
            continue
        checks = [((), schema, item), (("metadata",), METADATA, item.get("metadata", {}))]
        found = [([*prefix, *error.absolute_path], error.message) for prefix, rules, value in checks
                 for error in jsonschema.Draft4Validator(rules).iter_errors(value)]
        for path, message in sorted(found, key=lambda pair: list(map(str, pair[0]))):
            field = ".".join(map(str, path)) or "(object)"
            errors.append(f"{where}: {field}: {message}")
        if not found:
            validated.append(f"{where}: valid ({group}/{version})")
    return validated, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", type=Path, required=True, help="directory of CustomResourceDefinition files")
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    schemas = load_schemas(args.crds)
    if not schemas:
        print(f"no CustomResourceDefinitions in {args.crds}", file=sys.stderr)
        return 2
    failed = False
    for path in args.files:
        validated, errors = validate(path, schemas)
        for line in validated:
            print(line)
        for line in errors:
            print(line, file=sys.stderr)
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
