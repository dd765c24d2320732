"""The Rspamd kinds end to end through the CLI on a volume folder: what plan says and apply
writes, directive lines a declaration replaces, settings that stay when another one changes,
export adopting an existing rspamd/ folder, refusals that write nothing, and what the DMS target
means for the plan. The real-DMS proofs are in tests/realdms/test_rspamd.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from reconciler.model import DesiredState, Quarantine, Rspamd, SaLearnJob, Learn
from reconciler.planner import target
from tests.support.util import make_volume, run_cli, sha512_hash, write_desired

ADMIN = sha512_hash("admin-pw", salt="adminsalt")
HEAD = f"""\
version: 1
domains: [example.com]
accounts:
  admin@example.com: {{password_hash: "{ADMIN}"}}
"""
RSPAMD = """\
rspamd:
  actions: {{greylist: 4, add_header: 6, reject: {reject}}}
  senders: {{allow: [partner@elsewhere.net, "@trusted.example"], deny: ["@spammer.example"]}}
  modules: {{disable: [rbl]}}
  options: {{module: {{classifier-bayes: {{autolearn: true}}}}}}
  learn:
    - {{schedule: "0 2 * * *", learn: spam, folder: .Junk, accounts: [admin@example.com]}}
"""
COMMANDS = (
    "# mine\n"
    "disable-module rbl\n"
    "set-option-for-module classifier-bayes autolearn false\n"
    'set-option-for-controller secure_ip "0.0.0.0/0"\n'
)


def _volume(tmp_path: Path, reject: int = 11) -> tuple[Path, list[str]]:
    volume = make_volume(tmp_path / "v")
    (volume.config / "postfix-accounts.cf").write_text(f"admin@example.com|{ADMIN}\n")
    rspamd = volume.config / "rspamd"
    (rspamd / "override.d").mkdir(parents=True)
    (rspamd / "custom-commands.conf").write_text(COMMANDS)
    (rspamd / "override.d" / "actions.conf").write_text("rewrite_subject = 8;\n")
    desired = write_desired(tmp_path / "mailserver.yaml", HEAD + RSPAMD.format(reject=reject))
    args = ["-f", str(desired), "--config-dir", str(volume.config), "--cron-file", str(volume.cron)]
    return volume.config, args


def _tree(config: Path) -> dict[str, str]:
    return {
        str(p.relative_to(config)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(config.rglob("*"))
        if p.is_file() and p.name != "dms-reconciler.state.json"
    }


def test_apply_writes_override_files_and_removes_only_the_replaced_directives(tmp_path):
    config, args = _volume(tmp_path)
    plan = json.loads(run_cli("plan", "--format", "json", *args).stdout)
    removed = [c["key"] for c in plan["changes"] if c["kind"] == "rspamd_directive"]
    assert removed == ["disable-module rbl", "set-option-for-module classifier-bayes autolearn false"]
    assert any("line 4" in w and "custom-commands.conf" in w for w in plan["warnings"])
    assert run_cli("apply", *args).returncode == 0
    over = config / "rspamd" / "override.d"
    assert (over / "rbl.conf").read_text().splitlines()[1:] == ["enabled = false;"]
    assert (over / "classifier-bayes.conf").read_text().splitlines()[1:] == ["autolearn = true;"]
    assert (over / "actions.conf").read_text().splitlines()[1:] == [
        "greylist = 4;", "add_header = 6;", "reject = 11;", "rewrite_subject = 8;"
    ]
    assert (over / "dms-sender-deny-domain.map").read_text().splitlines()[1:] == ["spammer.example"]
    multimap = (over / "multimap.conf").read_text()
    assert 'map = "/etc/rspamd/override.d/dms-sender-allow-domain.map";' in multimap
    assert (config / "rspamd" / "custom-commands.conf").read_text() == (
        '# mine\nset-option-for-controller secure_ip "0.0.0.0/0"\n'
    )
    cron = (tmp_path / "v" / "cron" / "sa-learn").read_text()
    assert "|| exit 0; rspamc -h 127.0.0.1:11334 learn_spam /var/mail/example.com/admin/.Junk" in cron
    assert "No changes" in run_cli("plan", *args).stdout


def test_a_later_change_rewrites_only_its_own_file(tmp_path):
    config, args = _volume(tmp_path)
    assert run_cli("apply", *args).returncode == 0
    for reject in (15, 20):
        before = _tree(config)
        write_desired(Path(args[1]), HEAD + RSPAMD.format(reject=reject))
        out = run_cli("apply", *args)
        assert out.returncode == 0, out.stderr
        after = _tree(config)
        assert {k for k in after if after[k] != before.get(k)} == {"rspamd/override.d/actions.conf"}
        assert f"reject = {reject};" in (config / "rspamd/override.d/actions.conf").read_text()


def test_removing_a_declaration_removes_what_we_wrote_and_keeps_the_rest(tmp_path):
    config, args = _volume(tmp_path)
    assert run_cli("apply", *args).returncode == 0
    write_desired(Path(args[1]), HEAD)
    # what apply wrote goes as every other file's entries do: past the deletion guard (half of
    # the settings a file holds for us), only with --allow-deletions or policy.max_deletions
    refused = run_cli("apply", *args)
    assert refused.returncode == 1 and "--allow-deletions" in refused.stderr, refused.stderr
    assert run_cli("apply", *args, "--allow-deletions", "10").returncode == 0
    over = config / "rspamd" / "override.d"
    assert (over / "actions.conf").read_text().splitlines()[1:] == ["rewrite_subject = 8;"]
    assert (over / "rbl.conf").read_text().splitlines()[1:] == []
    assert (over / "dms-sender-deny-domain.map").read_text().splitlines()[1:] == []
    assert "DMS_SENDER" not in (over / "multimap.conf").read_text()
    assert "rspamc" not in (tmp_path / "v" / "cron" / "sa-learn").read_text()


def test_a_hostile_value_is_refused_at_its_line_and_nothing_is_written(tmp_path):
    config, args = _volume(tmp_path)
    before = _tree(config)
    write_desired(
        Path(args[1]),
        HEAD + 'rspamd:\n  options: {common: {dns_timeout: "1;\\n}evil {"}}\n',
    )
    out = run_cli("apply", *args)
    assert out.returncode != 0
    assert "mailserver.yaml:6:" in out.stderr and "';'" in out.stderr, out.stderr
    assert _tree(config) == before


def test_an_override_file_we_cannot_read_flat_is_left_alone_with_a_warning(tmp_path):
    config, args = _volume(tmp_path)
    (config / "rspamd/override.d/actions.conf").write_text("reject = 20;\n.include \"x\"\n")
    plan = json.loads(run_cli("plan", "--format", "json", *args).stdout)
    assert any("actions.conf has lines" in w for w in plan["warnings"])
    assert not any(c["file"] == "rspamd/override.d/actions.conf" for c in plan["changes"])


def test_export_adopts_the_rspamd_folder(tmp_path):
    config, args = _volume(tmp_path)
    assert run_cli("apply", *args).returncode == 0
    (config / "rspamd" / "custom-commands.conf").write_text(
        "disable-module chartable\nset-common-option dns_timeout 2\nadd-line x.conf y\n"
    )
    out = tmp_path / "exported.yaml"
    result = run_cli("export", "--config-dir", str(config), "--cron-file",
                     str(tmp_path / "v/cron/sa-learn"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(out.read_text())["rspamd"]
    assert doc["actions"] == {"greylist": 4, "add_header": 6, "reject": 11}
    assert doc["senders"] == {"allow": ["@trusted.example", "partner@elsewhere.net"],
                              "deny": ["@spammer.example"]}
    assert doc["modules"] == {"disable": ["chartable", "rbl"]}
    assert doc["options"] == {"common": {"dns_timeout": 2},
                              "module": {"classifier-bayes": {"autolearn": True}}}
    assert doc["learn"][0]["accounts"] == ["admin@example.com"]
    assert "line 3: left unmanaged" in result.stderr + result.stdout
    assert "rewrite_subject" in result.stderr + result.stdout


def test_the_target_says_what_rspamd_means_for_the_file():
    job = SaLearnJob("0 2 * * *", Learn.SPAM, ".Junk")
    desired = DesiredState(1, ("example.com",), (), quarantine=Quarantine("q@example.com"),
                           rspamd=Rspamd(learn=(job,)))
    rspamd = target.facts_from_env(
        {"ENABLE_RSPAMD": "1", "ENABLE_AMAVIS": "0", "RSPAMD_LEARN": "1", "DMS_RELEASE": "v16.0.1"},
        "mailserver",
    )
    said = target.warnings(rspamd, desired)
    assert any("no Rspamd equivalent" in w for w in said)
    assert any("RSPAMD_LEARN=1" in w and "twice" in w for w in said)
    assert not any("ENABLE_AMAVIS=0: DMS never reads" in w for w in said)
    amavis = target.facts_from_env({"DMS_RELEASE": "v16.0.1"}, "mailserver")
    assert any("ENABLE_RSPAMD=0" in w for w in target.warnings(amavis, desired))
