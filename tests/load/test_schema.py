"""The JSON Schema is what editors use: it must be valid, shipped, and agree with the example."""

from __future__ import annotations

import json

import jsonschema
import yaml

from reconciler.load.desired import schema
from tests.support.util import REPO


def test_schema_is_valid_draft_2020_12_with_id_and_descriptions() -> None:
    data = json.loads((REPO / "schema" / "mailserver.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(data)
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert data["$id"].endswith("mailserver.schema.json")
    for name, prop in data["properties"].items():
        assert prop.get("description"), f"{name} has no description"


def test_packaged_schema_is_the_repository_schema() -> None:
    assert schema() == json.loads((REPO / "schema" / "mailserver.schema.json").read_text())


def test_example_validates_with_plain_jsonschema_as_an_editor_would() -> None:
    doc = yaml.safe_load((REPO / "examples" / "mailserver.yaml").read_text())
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_schema_examples_validate() -> None:
    for example in schema()["examples"]:
        jsonschema.Draft202012Validator(schema()).validate(example)


def test_example_validates_with_the_cli() -> None:
    from tests.support.util import run_cli

    result = run_cli("validate", "-f", str(REPO / "examples" / "mailserver.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid: 2 domains, 3 accounts, 3 aliases" in result.stdout
