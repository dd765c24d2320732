"""`--format json` against its own schema (schema/plan.schema.json), on real plans and applies."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.formats import registry
from reconciler.plan import FORMAT_VERSION, Kind
from tests.cli.test_ci_plan import ENV, HASH, _two_commits
from tests.support.ci_util import Repo, load_plan_schema
from tests.support.util import REPO, make_volume, run_cli


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every documented object closed and `file`/`kind` limited to 1.1's values:
    real output must not carry anything the schema (and so the docs) does not describe."""
    out = copy.deepcopy(schema)
    out["$defs"]["file"] = {
        "anyOf": [{"$ref": "#/$defs/knownFiles"}, {"$ref": "#/$defs/knownRspamdFile"}]
    }
    out["$defs"]["kind"] = {"$ref": "#/$defs/knownKinds"}

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("type") == "object":
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(out)
    return out


SCHEMA = load_plan_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
STRICT = jsonschema.Draft202012Validator(strict(SCHEMA))


def check(data: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(data)]
    assert errors == []
    undocumented = [f"{list(e.absolute_path)}: {e.message}" for e in STRICT.iter_errors(data)]
    assert undocumented == []


def cli_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run_cli(*args, "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return _two_commits(tmp_path_factory.mktemp("schema") / "repo")


def test_the_schema_is_valid_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(strict(SCHEMA))


def test_plans_against_a_ref_validate(repo: Repo) -> None:
    changes = repo.plan_json("--against-ref", "main", env=ENV)
    assert changes["summary"]["has_changes"] and changes["baseline"]["kind"] == "git"
    check(changes)
    check(repo.plan_json("--against-ref", "HEAD", env=ENV))


# A catch-all domain with an account that is not the catch-all's target: that account gets a
# self-route (the bundled example's only catch-all domain account is the target, which needs none).
SELF_ALIAS_DESIRED = f"""version: 1
domains: [example.org]
accounts:
  jane@example.org: {{password_hash: "{HASH['dave']}"}}
  bob@example.org: {{password_hash: "{HASH['admin']}"}}
catch_all: {{example.org: jane@example.org}}
"""


def test_every_kind_and_file_validates(tmp_path: Path) -> None:
    """The bundled example plus a catch-all domain with a second account, on an empty volume,
    create every kind; a volume copy adds unmanaged entries, deletes under prune and the dir
    baseline."""
    volume = make_volume(tmp_path / "dms")
    example = str(REPO / "examples" / "mailserver.yaml")
    plan = cli_json("plan", "-f", example, *volume.args(), "--offline")
    check(plan)
    second = tmp_path / "self-alias.yaml"
    second.write_text(SELF_ALIAS_DESIRED)
    self_alias_plan = cli_json("plan", "-f", str(second), *volume.args(), "--offline")
    check(self_alias_plan)
    routes = [c["after"] for c in self_alias_plan["changes"] if c["kind"] == "self_route"]
    assert [r["address"] for r in routes] == ["bob@example.org", "bob@example.org"]
    # an earlier version's self-alias line: deleted as its self-routes are written
    volume.write("postfix-accounts.cf", f"bob@example.org|{HASH['admin']}\n")
    volume.write("postfix-virtual.cf", "bob@example.org bob@example.org\n")
    volume.write("dms-reconciler.state.json", json.dumps(
        {"format": 1, "owns_cron": False, "owned": {"postfix-virtual.cf": ["bob@example.org"]}}))
    moved = cli_json("plan", "-f", str(second), *volume.args(), "--offline")
    check(moved)
    assert [c["key"] for c in moved["changes"] if c["kind"] == "self_alias"] == ["bob@example.org"]
    for name in ("postfix-accounts.cf", "postfix-virtual.cf", "dms-reconciler.state.json"):
        (volume.config / name).unlink()
    kinds = {c["kind"] for c in plan["changes"]} | {"self_alias", "self_route"}
    assert kinds <= set(SCHEMA["$defs"]["knownKinds"]["enum"])
    volume.write("postfix-accounts.cf", f"legacy@example.com|{HASH['dave']}\n")
    volume.write("postfix-virtual.cf", "@example.org someone@example.net\n")
    check(cli_json("plan", "-f", example, "--against-dir", str(volume.config)))
    check(cli_json("plan", "-f", example, "--against-dir", str(volume.config), "--prune"))


def test_apply_output_validates(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    example = str(REPO / "examples" / "mailserver.yaml")
    applied = cli_json("apply", "-f", example, *volume.args(), env={"BOB_PASSWORD": "example-only"})
    assert applied["applied"]["files_written"]
    check(applied)
    # the stored hashes are now on the volume: none is in the JSON
    stored = volume.read("postfix-accounts.cf") or ""
    hashes = [line.split("|")[1] for line in stored.splitlines() if "|" in line]
    assert len(hashes) == 3
    for stored_hash in hashes:
        assert stored_hash not in json.dumps(applied)
    again = cli_json("plan", "-f", example, *volume.args(), env={"BOB_PASSWORD": "example-only"})
    assert again["summary"]["has_changes"] is False
    check(again)


@pytest.mark.parametrize("mutate", [
    lambda d: d["changes"][0]["after"].update(password="{SHA512-CRYPT}$6$salt$hash"),
    lambda d: d.update(format_version="2.0"),
    lambda d: d.pop("summary"),
    lambda d: d["changes"][0].update(actions=["replace"]),
    lambda d: d["changes"][0].update(before=None),  # an update needs before and after
    lambda d: d["volume"]["fingerprint"].update({"cron": "not-a-digest"}),
    lambda d: d["baseline"].update(commit="HEAD"),
])
def test_the_schema_rejects_what_the_contract_forbids(repo: Repo, mutate: Any) -> None:
    data = repo.plan_json("--against-ref", "main", env=ENV)
    data["changes"] = [c for c in data["changes"] if c["actions"] == ["update"]
                       and c["kind"] == "account"]
    VALIDATOR.validate(data)
    mutate(data)
    assert list(VALIDATOR.iter_errors(data))


def test_unknown_properties_are_allowed_by_the_compatibility_rule(repo: Repo) -> None:
    data = repo.plan_json("--against-ref", "main", env=ENV)
    data["added_in_1_1"] = {"anything": True}
    data["changes"][0]["new_field"] = 1
    data["format_version"] = "1.7"
    data["changes"][0]["kind"] = "relay"  # a kind a later 1.x may add
    VALIDATOR.validate(data)


def _property_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        names |= set(node.get("properties", {}))
        for value in node.values():
            names |= _property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _property_names(value)
    return names


def test_docs_describe_every_property_and_value() -> None:
    doc = (REPO / "docs" / "plan-json.md").read_text()
    missing = sorted(n for n in _property_names(SCHEMA) if f"`{n}`" not in doc)
    assert missing == []
    for enum in ("knownFiles", "knownKinds", "action", "password"):
        for value in SCHEMA["$defs"][enum]["enum"]:
            assert f"`{value}`" in doc, value
    assert f'"{FORMAT_VERSION}"' in doc and "ignore properties they do not know" in doc


def test_the_schema_knows_every_kind_and_file_the_tool_has() -> None:
    """A new kind or DMS file in the code is a 1.x addition the schema must name."""
    assert set(SCHEMA["$defs"]["knownKinds"]["enum"]) == {kind.value for kind in Kind}
    fixed = set(SCHEMA["$defs"]["knownFiles"]["enum"])
    rspamd = re.compile(SCHEMA["$defs"]["knownRspamdFile"]["pattern"])
    for entry in registry.FILES:
        assert entry.name in fixed or rspamd.match(entry.name), entry.name
