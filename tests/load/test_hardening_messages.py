"""Messages a new admin meets (issue 20; issue 22 made the self-alias warning unnecessary: the
self-routes in postfix-regexp.cf give DMS nothing to warn about, and the note on them has well
formed Markdown); validate names indentation mistakes, the bad cron field, and
offers the near address for a typo'd alias target."""

from __future__ import annotations

from pathlib import Path

from reconciler import render
from tests.kinds.test_planner import HASH_A, desired, observed_from, plan_for
from tests.support.util import run_cli, write_desired

# --- self-routes instead of self-aliases: nothing for DMS (or the plan) to warn about ------------

CATCH_ALL = (f"  a@example.com: {{password_hash: '{HASH_A}'}}\n"
             f"  b@example.com: {{password_hash: '{HASH_A}'}}\n"
             "catch_all:\n  example.com: a@example.com\n")
# what an earlier version wrote: b's self-alias in postfix-virtual.cf
APPLIED = {"postfix-accounts.cf": f"a@example.com|{HASH_A}\nb@example.com|{HASH_A}\n",
           "postfix-virtual.cf": "b@example.com b@example.com\n@example.com a@example.com\n"}
OWNED = {"postfix-accounts.cf": ["a@example.com", "b@example.com"],
         "postfix-virtual.cf": ["b@example.com", "@example.com"]}


def _dms_warnings(plan) -> list[str]:
    return [w for w in plan.warnings if "self-alias" in w or "twice" in w]


def test_no_self_alias_and_no_warning_for_an_account_in_a_catch_all_domain(tmp_path: Path):
    first = plan_for(desired(CATCH_ALL), observed_from(tmp_path / "1", {}))
    assert _dms_warnings(first) == []
    assert {(c.file, c.kind.value) for c in first.changes if c.file != "postfix-accounts.cf"
            and "b" in c.key} == {("postfix-regexp.cf", "self_route")}
    # a volume an earlier version wrote: b's self-alias goes, saying why, as its routes arrive
    moved = plan_for(desired(CATCH_ALL), observed_from(tmp_path / "2", APPLIED, OWNED))
    assert _dms_warnings(moved) == []
    [gone] = [c for c in moved.changes if c.action.value == "delete"]
    assert (gone.file, gone.kind.value, gone.key) == (
        "postfix-virtual.cf", "self_alias", "b@example.com")
    assert gone.reason.startswith("moved to postfix-regexp.cf"), gone.reason
    assert sorted(c.key for c in moved.changes if c.action.value == "create") == [
        r"/^b@example\.com$/", r"/^b\+(.*)@example\.com$/"]


def test_plan_then_apply_then_plan_warns_never(tmp_path: Path, volume):
    path = write_desired(tmp_path / "mailserver.yaml",
                         "version: 1\ndomains: [example.com]\naccounts:\n" + CATCH_ALL)
    args = ["-f", str(path), *volume.args()]
    applied = run_cli("apply", *args)
    assert applied.returncode == 0, applied.stderr
    assert not [line for line in (applied.stdout + applied.stderr).splitlines()
                if line.startswith("Warning") and "self" in line], applied.stdout
    assert "b@example.com" not in (volume.config / "postfix-virtual.cf").read_text()
    for fmt in ("text", "markdown", "json"):
        result = run_cli("plan", *args, "--format", fmt, "--detailed-exitcode")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "self-" not in result.stdout + result.stderr, fmt


def test_markdown_keeps_closing_punctuation_out_of_a_code_span():
    shown = render.md_text("harmless (routing is right; see docs/real-dms.md)")
    assert shown.endswith("`docs/real-dms.md`\\)"), shown
    assert render.md_text("(see jane@example.org)") == "\\(see `jane@example.org`\\)"
    # a pattern whose own parentheses balance keeps them in its code span
    assert render.md_text("pattern ^(a|b)@example.org") == "pattern `^(a|b)@example.org`"
    assert render.md_text("(pattern ^(a|b)@example.org)") == \
        "\\(pattern `^(a|b)@example.org`\\)"


def test_the_self_route_note_in_markdown_has_well_formed_code_spans(tmp_path: Path):
    plan = plan_for(desired(CATCH_ALL), observed_from(tmp_path, {}))
    markdown = render.markdown(plan.to_dict())
    line = next(line for line in markdown.splitlines() if "self\\-routes:" in line)
    assert "`/^a\\+(.*)@d$/`" in line and "\\(its \\+extension addresses\\)" in line, line
    assert line.count("`") % 2 == 0, line


# --- validate: indentation, cron fields, did you mean ---------------------------------------------
# (the CLI cases are in tests/bad/: indentation-*, cron-bad-hour, cron-extension-debian-refuses,
# target-typo-other-domain, target-typo-short-name)


def _messages(text: str) -> list[str]:
    from reconciler.errors import InvalidDesiredState
    from reconciler.load.desired import load_desired_bytes
    from reconciler.load.yamlload import YamlLoadError

    try:
        load_desired_bytes(text.encode(), "m.yaml")
    except (InvalidDesiredState, YamlLoadError) as exc:
        return [d.format() for d in exc.diagnostics]
    return []


def test_a_line_with_two_colons_is_no_indentation_mistake():
    found = _messages("version: 1\ndomains: [example.org]\naccounts:\n"
                      "  a@example.org: {password_env: A}\naliases:\n  b@example.org: a@x: c\n")
    assert len(found) == 1 and "mapping values are not allowed" in found[0], found
    assert "indented" not in found[0]


def test_an_empty_value_before_a_dedented_line_gets_no_indentation_hint():
    found = _messages("version: 1\ndomains: [example.org]\naccounts:\n"
                      "  a@example.org:\n    password_env: A\n    quota:\n"
                      "  b@example.org: {password_env: B}\n")
    assert found and not any("indented" in m for m in found), found


def test_the_indentation_hint_points_at_the_line_and_column():
    found = _messages("version: 1\ndomains: [example.org]\naccounts:\n"
                      "  a@example.org:\n    quota: 5G\n      password_env: A\n")
    assert found == ["m.yaml:6:7: error: YAML syntax error: line 6 is indented further than the "
                     "`key: value` line above it, so YAML reads it as part of that value: is this "
                     "line indented like its siblings?"]


def test_every_cron_field_is_named_when_wrong():
    from reconciler.kinds.sa_learn import check_schedule

    for schedule, field, value in [
        ("60 2 * * *", "minute", "60"), ("0 24 * * *", "hour", "24"),
        ("0 2 0 * *", "day of month", "0"), ("0 2 * 13 *", "month", "13"),
        ("0 2 * * 8", "day of week", "8"), ("0 2 * * 1#2", "day of week", "1#2"),
        ("0 2 15W * *", "day of month", "15W"), ("*/0 2 * * *", "minute", "*/0"),
        ("0 2 * foo *", "month", "foo"), ("0 2 * * mon-xyz", "day of week", "mon-xyz"),
        ("0 2 * jan *", None, None),
    ]:
        problem = check_schedule(schedule)
        if field is None:
            assert problem is None, (schedule, problem)
            continue
        assert problem is not None and f"the {field} field '{value}' is wrong" in problem, (
            schedule, problem)
    for good in ("*/15 * * * *", "0 2 * * mon-fri", "0 0 1 jan,jul *", "30 3 * * 7",
                 "0 0 1-15/2 * *", "5,35 */2 * * SUN", "@daily"):
        assert check_schedule(good) is None, good
