"""`plan --format markdown`: a pull-request comment that is readable, safe and bounded.

The comment is parsed with a real CommonMark parser (markdown-it-py) to check its structure and
that nothing from a file (addresses, unmanaged lines, warnings) reaches the page as HTML, a
mention, an issue link or an autolink.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from reconciler import render
from tests.cli.test_ci_plan import BASE, ENV, FORBIDDEN, HEAD, _two_commits
from tests.support.ci_util import Repo, git, make_repo
from tests.support.util import make_volume, run_cli, sha512_hash

ALLOWED_TAGS = {"details", "summary", "code"}
HOSTILE = [
    "</details><script>alert(1)</script>@example.com",
    "@octocat",
    "x```y@example.com",
    "#1@example.com",
    "www.evil.example",
    "a|b*c*_d_[l](http://evil.example)@example.com",
    "<img\tsrc=x\x07onerror=alert(1)>",
    "``",
]


def parse(text: str) -> list[Any]:
    """Block tokens, with inline children flattened after their parent."""
    md = MarkdownIt("commonmark").enable("table")
    out = []
    for token in md.parse(text):
        out.append(token)
        out.extend(token.children or [])
    return out


def html_tags(tokens: list[Any]) -> set[str]:
    tags: set[str] = set()
    for t in tokens:
        if t.type in ("html_block", "html_inline"):
            tags |= {m.lower() for m in re.findall(r"</?\s*([A-Za-z][A-Za-z0-9-]*)", t.content)}
    return tags


def plain_text(tokens: list[Any]) -> str:
    """What GitHub would scan for mentions, issue links and autolinks: text outside code."""
    return "\n".join(t.content for t in tokens if t.type == "text")


def code_text(tokens: list[Any]) -> str:
    return "\n".join(t.content for t in tokens if t.type in ("code_inline", "fence", "code_block"))


def assert_safe(markdown: str) -> list[Any]:
    tokens = parse(markdown)
    assert html_tags(tokens) <= ALLOWED_TAGS
    text = plain_text(tokens)
    assert "@" not in text and "://" not in text and "www." not in text
    assert not re.search(r"#\d", text)
    opened = sum(t.content.count("<details>") for t in tokens if t.type.startswith("html"))
    closed = sum(t.content.count("</details>") for t in tokens if t.type.startswith("html"))
    assert opened == closed
    return tokens


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return _two_commits(tmp_path_factory.mktemp("md") / "repo")


@pytest.fixture(scope="module")
def comment(repo: Repo) -> str:
    done = repo.plan("--against-ref", "main", "--format", "markdown", env=ENV)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def plan_dict(repo: Repo) -> dict[str, Any]:
    return repo.plan_json("--against-ref", "main", env=ENV)


def test_summary_first_then_call_outs_then_folded_details(comment: str) -> None:
    tokens = assert_safe(comment)
    lines = comment.splitlines()
    assert lines[0] == "### dms-reconciler plan"
    assert lines[2] == "**Plan: 3 to add, 7 to change, 4 to destroy.**"
    assert lines[4].startswith("Compared with `mailserver.yaml` at `main` (`")
    warning = lines.index("> [!WARNING]")
    assert lines[warning + 1] == ("> This change destroys 4 entries: 1 account, 1 quota, 1 alias, "
                                  "1 sa-learn job.")
    assert lines[warning + 2] == ("> Accounts deleted: `dave@example.org`. Their mail under "
                                  "`/var/mail` is kept.")
    first_details = lines.index(next(line for line in lines if line.startswith("<details>")))
    assert warning < first_details  # the reader sees the deletes before unfolding anything
    summaries = [line for line in lines if line.startswith("<details><summary>")]
    assert [s.removeprefix("<details><summary>").removesuffix("</summary>") for s in summaries] == [
        "<code>postfix-accounts.cf</code>: 1 to add, 5 to change, 1 to destroy",
        "<code>dovecot-quotas.cf</code>: 1 to change, 1 to destroy",
        "<code>postfix-virtual.cf</code>: 1 to add, 1 to change, 1 to destroy",
        "sa-learn cron file: 1 to add, 1 to destroy",
    ]
    fences = [t for t in tokens if t.type == "fence"]
    assert [f.info for f in fences] == ["diff"] * 4
    for fence in fences:
        for line in fence.content.splitlines():
            assert line[:2] in ("+ ", "! ", "- ", "# ")
    assert "- alias sales@example.com -> admin@example.com  # removed from mailserver.yaml" in \
        fences[2].content
    assert "! account jane@example.org  password = (sensitive, resolved at apply)" in \
        fences[0].content
    assert "Password changes: `erin@example.org`, `gina@example.org`, `hank@example.org`, " \
           "`jane@example.org`, `kim@example.org` (values are never shown)." in lines
    table = [t for t in tokens if t.type == "table_open"]
    assert len(table) == 1


def test_no_secret_in_the_comment(comment: str) -> None:
    for secret in FORBIDDEN:
        assert secret not in comment


def test_no_changes(repo: Repo) -> None:
    done = repo.plan("--against-ref", "HEAD", "--format", "markdown", env=ENV)
    assert done.returncode == 0
    assert "**No changes. The config volume matches mailserver.yaml.**" in done.stdout
    assert "<details>" not in done.stdout and "[!WARNING]" not in done.stdout
    assert_safe(done.stdout)


def test_values_from_a_volume_cannot_inject_markdown_or_html(tmp_path: Path) -> None:
    """Unmanaged lines come from hand-edited files: anything can be in them."""
    volume = make_volume(tmp_path / "dms")
    hostile_lines = "\n".join(f"{key} @octocat" for key in HOSTILE if "\t" not in key)
    volume.write("postfix-virtual.cf", hostile_lines + "\n")
    volume.write("postfix-accounts.cf",
                 f"admin@example.com|{sha512_hash('x', salt='s1')}\n"
                 f"`@evil.example|{sha512_hash('y', salt='s2')}\n")
    desired = tmp_path / "mailserver.yaml"
    desired.write_text(f'version: 1\ndomains: [example.com]\naccounts:\n  admin@example.com: '
                       f'{{password_hash: "{sha512_hash("x", salt="s1")}"}}\n')
    done = run_cli("plan", "-f", str(desired), "--against-dir", str(volume.config),
                   "--format", "markdown")
    assert done.returncode == 0, done.stderr
    tokens = assert_safe(done.stdout)
    shown = code_text(tokens)
    assert "</details><script>alert(1)</script>@example.com" in shown  # shown, as code
    assert "$6$" not in done.stdout


def _hostile_plan(base: dict[str, Any]) -> dict[str, Any]:
    plan = copy.deepcopy(base)
    change = plan["changes"][0]
    plan["changes"] = []
    for i, bad in enumerate(HOSTILE):
        c = copy.deepcopy(change)
        c.update(file="postfix-virtual.cf", kind="alias", key=bad, actions=["delete"],
                 before={"targets": [bad, f"t{i}@example.com"]}, after=None,
                 reason=f"reason {bad}", details=[f"detail {bad}"])
        plan["changes"].append(c)
    plan["unmanaged"] = [{"file": "postfix-virtual.cf", "kind": "alias", "key": bad}
                         for bad in HOSTILE]
    plan["warnings"] = [f"warning about '{bad}' and #12 and @octocat" for bad in HOSTILE]
    plan["notes"] = [f"note {bad}" for bad in HOSTILE]
    plan["deletions"] = {"accounts": 3, "limit": 1, "limit_source": "policy <b>max</b> @x",
                         "over_limit": True}
    plan["baseline"] = {"kind": "git", "ref": "main`<b>@octocat", "commit": "0" * 40,
                        "path": "a`b/mailserver.yaml", "found": True}
    return plan


def test_hostile_text_in_every_field_stays_inert(plan_dict: dict[str, Any]) -> None:
    markdown = render.markdown(_hostile_plan(plan_dict))
    tokens = assert_safe(markdown)
    assert "> [!CAUTION]" in markdown
    assert "\x07" not in markdown and "\t" not in markdown  # control characters made visible
    for bad in HOSTILE:
        if "\t" not in bad and "\x07" not in bad:
            assert bad in code_text(tokens)


def test_code_spans_hold_any_backtick_run() -> None:
    for value in ["a`b", "``", "`x`", "a``b```c", " ", "`", " a ", "  "]:
        token = [t for t in parse(render.md_code(value)) if t.type == "code_inline"]
        assert [t.content for t in token] == [value]


def _many_changes(base: dict[str, Any], n: int) -> dict[str, Any]:
    plan = copy.deepcopy(base)
    template = plan["changes"][0]
    plan["changes"] = []
    for i in range(n):
        c = copy.deepcopy(template)
        key = f"user{i:05d}@example.org"
        c.update(file="postfix-virtual.cf", kind="alias", key=key, actions=["create"], before=None,
                 after={"targets": [f"a-rather-long-target-{j}@example.net" for j in range(4)]},
                 reason="", details=[])
        plan["changes"].append(c)
    plan["summary"] = {**plan["summary"], "add": n, "change": 0, "destroy": 0}
    plan["unmanaged"] = [{"file": "postfix-virtual.cf", "kind": "alias", "key": f"u{i}@x.org"}
                         for i in range(5000)]
    return plan


@pytest.mark.parametrize("limit", [render.MARKDOWN_MAX_CHARS, 8000])
def test_a_huge_plan_is_cut_to_fit_a_comment_and_says_so(plan_dict: dict[str, Any],
                                                        limit: int) -> None:
    plan = _many_changes(plan_dict, 20000)
    markdown = render.markdown(plan, max_chars=limit)
    assert len(markdown) <= limit
    match = re.search(r"This plan is too long for one comment: (\d+) of 20000 entries are shown",
                      markdown)
    assert match and 0 < int(match.group(1)) < 20000
    assert "`dms-reconciler plan --format json`" in markdown
    assert markdown.count("\n+ alias ") == int(match.group(1))  # the count is honest
    assert "> [!IMPORTANT]" in markdown  # a mass change is called out
    assert "**Plan: 20000 to add, 0 to change, 0 to destroy.**" in markdown
    assert_safe(markdown)


def test_mass_change_call_out_threshold(plan_dict: dict[str, Any]) -> None:
    assert "[!IMPORTANT]" not in render.markdown(_many_changes(plan_dict, render.MASS_CHANGE - 1))
    assert "[!IMPORTANT]" in render.markdown(_many_changes(plan_dict, render.MASS_CHANGE))


def test_deletion_limit_call_out(tmp_path: Path) -> None:
    """Deleting most accounts in a pull request: the comment says apply will refuse it."""
    repo = make_repo(tmp_path / "repo")
    accounts = "\n".join(f"  u{i}@example.com: {{password_env: U{i}}}" for i in range(6))
    repo.commit(f"version: 1\ndomains: [example.com]\naccounts:\n{accounts}\n", "six")
    repo.write("version: 1\ndomains: [example.com]\n"
               "accounts:\n  u0@example.com: {password_env: U0}\n")
    done = repo.plan("--against-ref", "HEAD", "--format", "markdown")
    assert done.returncode == 0, done.stderr
    assert "> [!CAUTION]\n> Apply will refuse this plan: it deletes 5 accounts, more than the " \
           "limit of 3" in done.stdout
    assert "`--allow-deletions 5`" in done.stdout
    assert "Accounts deleted: `u1@example.com`, `u2@example.com`" in done.stdout
    assert_safe(done.stdout)
    plan = json.loads(repo.plan("--against-ref", "HEAD", "--format", "json").stdout)
    assert plan["deletions"]["over_limit"] is True
    assert git(repo.root, "status", "--porcelain") == "M mailserver.yaml"


def test_base_and_head_fixtures_are_what_the_plan_tests_use() -> None:
    assert "sales@example.com" in BASE and "orders@example.com" in HEAD


def test_the_code_spans_of_our_own_notes_render_as_code(tmp_path: Path) -> None:
    """The Amavis note (and every warning or note that quotes a command or a YAML snippet in
    backticks) renders as prose with one code span per command, not as broken backticks."""
    volume = make_volume(tmp_path / "dms")
    admin = sha512_hash("admin-pw", salt="mdSalt000001")
    desired = tmp_path / "mailserver.yaml"
    desired.write_text(f"version: 1\ndomains: [example.com]\naccounts:\n"
                       f"  admin@example.com: {{password_hash: \"{admin}\"}}\n"
                       "quarantine: {mailbox: admin@example.com}\n")
    done = run_cli("plan", "-f", str(desired), *volume.args(), "--format", "markdown")
    assert done.returncode == 0, done.stderr
    tokens = assert_safe(done.stdout)
    codes = [t.content for t in tokens if t.type == "code_inline"]
    assert "docker compose up -d --force-recreate" in codes
    note = next(t for t in tokens if t.type == "inline" and "Amavis" in t.content)
    assert "`" not in "".join(c.content for c in note.children if c.type == "text")
    assert "amavis.cf is read when the DMS container starts: the sidecar" in plain_text(tokens)
    for snippet in ("use `catch_all: {example.com: ...}` here", "``a`b`` and `c`"):
        inline = [t for t in parse(render.md_text(snippet)) if t.type == "code_inline"]
        assert [t.content for t in inline] == (["catch_all: {example.com: ...}"]
                                               if "catch" in snippet else ["a`b", "c"])
