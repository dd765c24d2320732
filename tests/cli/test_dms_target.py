"""Knowing the DMS a plan is for (planner/target.py): its settings with DMS's defaults, the
warnings they lead to, and the faults (the container
cannot be found or its environment read): reported, and the plan is still made.

The same warnings against real DMS containers: tests/realdms/test_target.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest

from reconciler.load.desired import load_desired_bytes
from reconciler.planner import target
from reconciler.watch.dms import Dms
from tests.support.util import REPO, make_volume, run_cli, sha512_hash, write_desired

HASH = sha512_hash("pw", "saltsalt")
FULL = f"""\
version: 1
domains: [example.test]
accounts:
  admin@example.test: {{password_hash: "{HASH}", quota: 50M}}
aliases:
  out@example.test: someone@elsewhere.net
  team@example.test: [admin@example.test, someone@elsewhere.net]
catch_all: {{example.test: admin@example.test}}
devnull: [noreply@example.test]
quarantine: {{mailbox: admin@example.test}}
sa_learn:
  - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [admin@example.test]}}
"""
ALL_ON = {"DMS_RELEASE": "v16.0.1", "ENABLE_SPAMASSASSIN": "1"}


def state(text: str = FULL) -> Any:
    return load_desired_bytes(text.encode(), "m.yaml").state


def warned(env: dict[str, str], text: str = FULL) -> list[str]:
    return target.warnings(target.facts_from_env(env, "mailserver"), state(text))


def test_unset_settings_take_dms_defaults() -> None:
    facts = target.facts_from_env({"DMS_RELEASE": "v15.1.0", "ENABLE_AMAVIS": ""}, "m")
    assert dict(facts.settings) == target.DEFAULTS
    assert set(facts.defaulted) == set(target.DEFAULTS)
    assert facts.version == (15, 1, 0) and facts.line == "v15"
    # DMS turns quotas off by default when accounts do not come from files, or SMTP_ONLY=1
    for env in ({"ACCOUNT_PROVISIONER": "LDAP"}, {"SMTP_ONLY": "1"}):
        assert target.facts_from_env(env, "m").settings["ENABLE_QUOTAS"] == "0"
    explicit = target.facts_from_env({"ACCOUNT_PROVISIONER": "LDAP", "ENABLE_QUOTAS": "1"}, "m")
    assert explicit.settings["ENABLE_QUOTAS"] == "1" and "ENABLE_QUOTAS" not in explicit.defaulted


def test_no_warning_when_every_declared_part_works_there() -> None:
    assert warned(ALL_ON) == []
    assert warned({**ALL_ON, "DMS_RELEASE": "v15.1.0"}) == []


@pytest.mark.parametrize("written", ["01", "+1", " 1 ", "0x1"])
def test_a_setting_is_on_as_dms_reads_it_arithmetically(written: str) -> None:
    """DMS tests `[[ ${SETTING} -eq 1 ]]`: 01 is on for DMS, so it is for the plan; 2 is not."""
    assert warned({**ALL_ON, "ENABLE_SPAMASSASSIN": written}) == []
    assert warned({**ALL_ON, "ENABLE_QUOTAS": written.replace("1", "0")}) != []
    assert target.facts_from_env({"ENABLE_RSPAMD": written}, "m").on("ENABLE_RSPAMD")
    assert not target.facts_from_env({"ENABLE_RSPAMD": "2"}, "m").on("ENABLE_RSPAMD")


def test_each_part_without_effect_is_named() -> None:
    assert warned({**ALL_ON, "ENABLE_QUOTAS": "0"}) == [
        "quotas are declared but ENABLE_QUOTAS=0: DMS ignores dovecot-quotas.cf (no limits)"]
    off = warned({**ALL_ON, "ENABLE_AMAVIS": "0"})
    assert [w.split(":")[0] for w in off] == ["quarantine is declared but ENABLE_AMAVIS=0",
                                             "sa_learn is declared but ENABLE_AMAVIS=0"]
    no_sa = warned({"DMS_RELEASE": "v16.0.1"})  # SpamAssassin is off by default
    assert [w.split(":")[0] for w in no_sa] == ["quarantine is declared but ENABLE_SPAMASSASSIN=0",
                                               "sa_learn is declared but ENABLE_SPAMASSASSIN=0"]
    ldap = warned({**ALL_ON, "ACCOUNT_PROVISIONER": "LDAP"})
    assert ldap[0].startswith("ACCOUNT_PROVISIONER=LDAP: DMS takes accounts and aliases from LDAP")
    # and LDAP's default ENABLE_QUOTAS=0 makes the declared quota useless too
    assert ldap[1].startswith("quotas are declared but ENABLE_QUOTAS=0")


def test_v16_0_0_with_quotas_names_what_it_refuses() -> None:
    [trap] = warned({**ALL_ON, "DMS_RELEASE": "v16.0.0"})
    assert trap.startswith("DMS v16.0.0 with ENABLE_QUOTAS=1 refuses mail")
    # team has a local target: v16 gives it admin's userdb entry, so it is not refused
    assert ("@example.test (catch-all), out@example.test, noreply@example.test (devnull). "
            "Fixed in v16.0.1") in trap
    assert warned({**ALL_ON, "DMS_RELEASE": "v16.0.0", "ENABLE_QUOTAS": "0"}) == [
        "quotas are declared but ENABLE_QUOTAS=0: DMS ignores dovecot-quotas.cf (no limits)"]
    for fixed in ("v16.0.1", "16.0.2", "edge"):
        assert warned({**ALL_ON, "DMS_RELEASE": fixed}) == [], fixed


@pytest.mark.parametrize("release", ["v17.0.0", "v14.0.0", "nightly", ""])
def test_an_unknown_or_future_release_is_reported_and_planned_as_v16(release: str) -> None:
    [unknown] = warned({**ALL_ON, "DMS_RELEASE": release})
    shown = release or "(DMS_RELEASE unset)"
    assert unknown.startswith(f"DMS release {shown} is not one dms-reconciler was tested with")


def test_edge_is_the_newest_line_with_a_note() -> None:
    facts = target.facts_from_env({**ALL_ON, "DMS_RELEASE": "edge"}, "m")
    assert facts.line == "v16" and target.warnings(facts, state()) == []
    assert "planned as for the newest release line known (v16)" in target.notes(facts)[0]
    assert facts.info_labels()["release_line"] == "v16"


def test_an_unreadable_target_is_one_warning() -> None:
    facts = target.unreadable("mailserver", "the Docker engine is not running there")
    assert facts.to_dict() == {"found": False, "container": "mailserver",
                               "reason": "the Docker engine is not running there"}
    assert target.warnings(facts, state()) == [
        "could not read the DMS container's settings (the Docker engine is not running "
        "there): the plan does not know which DMS release and features it is for"]


def test_a_container_whose_environment_cannot_be_read() -> None:
    """docker inspect without Config.Env (the real engine always has one: a fake for the path)."""
    dms = Dms(container="mailserver")
    for attrs in ({}, {"Config": None}, {"Config": {"Env": None}}, {"Config": {"Env": [3]}}):
        dms.find = lambda a=attrs: SimpleNamespace(name="mailserver", attrs=a)  # type: ignore[method-assign]
        facts = dms.read_facts()
        assert facts.error == "the container's environment (Config.Env) could not be read"


def test_plan_with_an_unreachable_container_still_plans(tmp_path: Path) -> None:
    volume = make_volume(tmp_path)
    path = write_desired(tmp_path / "m.yaml", FULL)
    done = run_cli("plan", "-f", str(path), *volume.args(), "--container", "mailserver",
                   "--format", "json",
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["target"] == {"found": False, "container": "container 'mailserver'", "reason":
                              f"no Docker socket at {tmp_path}/no-engine.sock (DOCKER_HOST): "
                              "the Docker engine is not running there"}
    assert data["summary"]["add"] > 0
    assert any(w.startswith("could not read the DMS container's settings") for w in
               data["warnings"])
    text = run_cli("plan", "-f", str(path), *volume.args(), "--container", "mailserver",
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert text.returncode == 0 and "DMS settings unknown: no Docker socket" in text.stderr
    schema = json.loads((REPO / "schema" / "plan.schema.json").read_text())
    jsonschema.validate(data, schema)
    found = target.facts_from_env({"DMS_RELEASE": "edge"}, "mailserver").to_dict()
    jsonschema.validate({**data, "target": found}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "target": {**found, "settings": {"ENABLE_QUOTAS": 1}}}, schema)
    # without --container nothing is looked up, and the JSON has no target
    plain = run_cli("plan", "-f", str(path), *volume.args(), "--format", "json")
    assert "target" not in json.loads(plain.stdout)
