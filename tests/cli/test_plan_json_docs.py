"""docs/plan-json.md names every `kind` the plan can carry (reconciler.plan.Kind) and every file a
full `rspamd:` section's plan writes, so a consumer of `plan --format json` finds each value
documented; the plan of a full `rspamd:` section on a volume with directive lines validates
against schema/plan.schema.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

from reconciler.plan import Kind
from tests.support.ci_util import load_plan_schema
from tests.support.util import REPO, make_volume, run_cli, sha512_hash

PW_HASH = "$2$6y69exj8zem6kpp43kiabd98j8pwccew$paw15tsh6f9ef1osyfkpsdm34jb5g1qcohj563yj59y69zthttcy"
DOC = (REPO / "docs" / "plan-json.md").read_text()
FULL_RSPAMD = f"""\
version: 1
domains: [example.test]
accounts:
  admin@example.test: {{password_hash: "{sha512_hash("admin-pw", "adminsalt")}"}}
rspamd:
  actions: {{greylist: 4, add_header: 6, reject: 11}}
  senders:
    allow: [partner@elsewhere.net, "@trusted.example"]
    deny: ["@spammer.example", bad@elsewhere.net]
  modules: {{disable: [rbl], enable: [neural]}}
  options:
    common: {{local_networks: "192.168.0.0/16"}}
    module: {{classifier-bayes: {{autolearn: true}}}}
  controller: {{password_hash: "{PW_HASH}"}}
  learn:
    - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [admin@example.test]}}
"""
# custom-commands.conf lines setting what the file declares: deleted as `rspamd_directive`s
DIRECTIVES = "disable-module rbl\nset-option-for-module classifier-bayes autolearn false\n"


def test_every_kind_is_documented() -> None:
    missing = [kind.value for kind in Kind if f"`{kind.value}`" not in DOC]
    assert missing == [], f"docs/plan-json.md does not name these kinds: {missing}"


def test_a_full_rspamd_plan_has_only_documented_kinds_and_files(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "dms")
    (volume.config / "rspamd").mkdir()
    volume.write("rspamd/custom-commands.conf", DIRECTIVES)
    desired = tmp_path / "mailserver.yaml"
    desired.write_text(FULL_RSPAMD)
    done = run_cli("plan", "-f", str(desired), *volume.args(), "--format", "json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    jsonschema.Draft202012Validator(load_plan_schema()).validate(plan)
    kinds = {c["kind"] for c in plan["changes"]}
    assert {k.value for k in Kind if k.value.startswith("rspamd_")} <= kinds
    undocumented = []
    for name in sorted({c["file"] for c in plan["changes"]} | {f["name"] for f in plan["files"]}):
        base = name.rsplit("/", 1)[-1]
        module_file = re.fullmatch(r"[a-z0-9_-]+\.conf", base) and name.startswith(
            "rspamd/override.d/")
        if f"`{name}`" in DOC or f"`{base}`" in DOC:
            continue
        if module_file and "`<module>.conf`" in DOC:  # rbl.conf, neural.conf ...
            continue
        undocumented.append(name)
    assert undocumented == [], f"docs/plan-json.md does not name these files: {undocumented}"
    for change in plan["changes"]:
        if change["kind"].startswith("rspamd_"):
            shown = change["after"] or change["before"]
            assert set(shown) == ({"line"} if change["kind"] == "rspamd_learn" else {"value"})
